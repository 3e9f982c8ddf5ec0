"""Data loaders: a seeded, resumable training order and the worker settings."""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import os
import signal
import threading
import time
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sslkit import console


class EpochSampler(Sampler):
    """A fresh permutation per epoch from ``(seed, epoch)``, yielding ``(index, sample_seed)`` pairs.

    Each epoch holds ``num_samples`` items (a whole number of batches: drop_last). ``start`` skips the
    items already trained on, for a mid-epoch resume. The per-sample seed fixes that sample's augmentation.
    With ``world_size`` processes each global batch of ``batch_size`` items is cut into equal shares and
    process ``rank`` gets its share: together they see exactly the batches one process would, with the same
    augmentations.
    """

    def __init__(self, dataset_size: int, num_samples: int, seed: int, batch_size: int = 1, rank: int = 0,
                 world_size: int = 1):
        self.dataset_size, self.num_samples, self.seed = dataset_size, num_samples, seed
        self.share, self.rank, self.world_size = batch_size // world_size, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return (self.num_samples - self.start) // self.world_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.dataset_size, generator=generator)[: self.num_samples].tolist()
        seeds = torch.randint(0, 2**62, (self.num_samples,), generator=generator).tolist()
        for position in range(self.start, self.num_samples):
            if (position // self.share) % self.world_size == self.rank:
                yield order[position], seeds[position]


def default_workers() -> int:
    """Leave a core to the training process; more than 8 workers rarely helps one GPU."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores - 1))


def _worker_init(main_exiting, quiet: bool, _: int) -> None:
    console.route_warnings(quiet)  # a worker started fresh (forkserver, spawn) speaks like the main process
    # Ctrl-C goes to the whole process group, and schedulers (SLURM's scancel, Kubernetes) send SIGTERM to
    # every process of a job: only the main process handles them (it writes a checkpoint, then stops the
    # workers), so a worker ignores both. It stops instead when the main process exits: multiprocessing then
    # stops its children with SIGTERM and waits for them, which would wait forever on a worker ignoring it.
    # A worker whose main process dies exits on its own (PyTorch's watchdog).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(main_exiting,), daemon=True).start()


def _exit_with(main_exiting) -> None:
    while not main_exiting.value:  # polled: a lock or an Event could be left held by a worker that died
        time.sleep(0.1)
    os._exit(0)


_EXITING: dict[int, object] = {}


def _main_exiting():
    """A shared flag this process raises as it exits, before multiprocessing stops its children and waits."""
    pid = os.getpid()
    if pid not in _EXITING:
        flag = multiprocessing.RawValue("b", 0)
        multiprocessing.util.Finalize(None, _set, args=(flag,), exitpriority=100)
        _EXITING[pid] = flag
    return _EXITING[pid]


def _set(flag) -> None:
    flag.value = 1


def make_loader(
    dataset: Dataset, batch_size: int, workers: int, device: torch.device, sampler=None, shuffle: bool = False
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        worker_init_fn=partial(_worker_init, _main_exiting(), console.is_quiet()) if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
        # each new iterator draws a base seed; from its own generator it leaves the global RNG (drop path,
        # masking) untouched, so a run resumed mid-epoch draws the same random numbers as an uninterrupted one
        generator=torch.Generator().manual_seed(0),
    )
