"""Batches as loaders give them (tensors, and lists or tuples of them): onto the training device, and their size."""

from __future__ import annotations

import torch


def to_device(batch, device: torch.device):
    """``batch`` with every tensor in it on ``device`` (asynchronous from pinned memory); other items as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


def batch_size(batch) -> int:
    """The number of images in ``batch``: the length of its first tensor (of the first view, with several)."""
    while isinstance(batch, (list, tuple)):
        batch = batch[0]
    return int(batch.shape[0])
