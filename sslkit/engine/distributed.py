"""Several processes, one per device, on PyTorch's own engine: ``torchrun --nproc_per_node N -m sslkit ...``.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; sslkit then joins the process group (NCCL on GPUs, gloo on
CPUs). Without torchrun nothing here creates a process group, and every helper is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_process() -> bool:
    """Whether this is torchrun's rank 0 (or no torchrun at all), known before the process group is joined."""
    return os.environ.get("RANK", "0") == "0"


def context() -> Context:
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Context()


def join(device_type: str) -> Context:
    """Join torchrun's process group once (when WORLD_SIZE > 1); the context either way."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return context()


def device_for(device: torch.device, ctx: Context) -> torch.device:
    """Each process drives the GPU of its local rank."""
    return torch.device("cuda", ctx.local_rank) if ctx.enabled and device.type == "cuda" else device


def mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the mean of ``tensor`` over all processes."""
    if context().enabled:
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def any_process(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set in any process (so that all of them stop at the same step)."""
    if not context().enabled:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    if context().enabled:
        dist.barrier()


def gather_strided(rows: torch.Tensor, total: int, device: torch.device) -> torch.Tensor:
    """All ``total`` rows, in order, on the CPU of every process, from each process's share: the rows
    ``rank``, ``rank + world_size``, ``rank + 2 world_size``, ... (``shard_indices``)."""
    ctx = context()
    if not ctx.enabled:
        return rows
    per_process = -(-total // ctx.world_size)
    padded = rows.new_zeros((per_process, *rows.shape[1:]))  # all_gather needs equal sizes
    padded[: len(rows)] = rows
    padded = padded.to(device)  # NCCL gathers GPU tensors only
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return interleave([part.cpu() for part in parts], total)


def shard_indices(total: int) -> range:
    """This process's share of ``total`` items: every world_size-th, from its rank."""
    ctx = context()
    return range(ctx.rank, total, ctx.world_size)


def interleave(parts: list[torch.Tensor], total: int) -> torch.Tensor:
    """Rows ``p`` of the parts of processes ``0..W-1`` are items ``p W .. p W + W - 1``."""
    stacked = torch.stack(parts, 1)
    return stacked.reshape(-1, *stacked.shape[2:])[:total]


def wrap_step(method: torch.nn.Module, step: Callable, device: torch.device) -> DistributedDataParallel:
    """``step`` (``method``'s training step, maybe compiled) wrapped so that backward all-reduces the gradients."""
    return DistributedDataParallel(_Step(method, step), device_ids=[device.index] if device.type == "cuda" else None)


class _Step(torch.nn.Module):
    """A method's training step as a module's forward: DistributedDataParallel all-reduces the gradients of
    what runs through a forward call."""

    def __init__(self, method: torch.nn.Module, step: Callable):
        super().__init__()
        self.method, self.step = method, step

    def forward(self, batch):
        out = self.step(batch)
        return out.loss, out.logs
