"""Features of a frozen backbone over a whole data set: batched, mixed precision, with progress."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from sslkit import console
from sslkit.data.loader import make_loader
from sslkit.models.backbones import FeatureExtractor


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    label: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised fp32 features (on the CPU, N x D) and labels of every image of ``dataset``, in order."""
    extractor = FeatureExtractor(backbone).to(device)
    loader = make_loader(dataset, batch_size, workers, device, shuffle=False)
    features, labels, filled = None, torch.empty(len(dataset), dtype=torch.long), 0
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    with _bar(label, len(dataset)) as (bar, task), autocast:
        for images, targets in loader:
            batch = F.normalize(extractor(images.to(device, non_blocking=True)), dim=1).cpu()
            if features is None:
                features = torch.empty(len(dataset), batch.shape[1])
            features[filled : filled + len(batch)] = batch
            labels[filled : filled + len(batch)] = targets
            filled += len(batch)
            bar.update(task, advance=len(batch))
    return features, labels


class _bar:
    def __init__(self, label: str, total: int):
        self.progress = Progress(
            TextColumn(f"features {label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console.stderr, disable=console.is_quiet(), transient=True,
        )
        self.task = self.progress.add_task(label, total=total)

    def __enter__(self):
        self.progress.start()
        return self.progress, self.task

    def __exit__(self, *exc):
        self.progress.stop()
