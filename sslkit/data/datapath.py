"""Where a training run's batches come from, decided once per run and recorded in its config.json:

- ``store``: the data set decoded once into uint8 (sslkit.data.store), kept on the GPU, in pinned memory or in
  RAM, and cropped, flipped and coloured on the training device (sslkit.data.device_views): no CPU work per
  image, so a GPU is never starved by its input pipeline.
- ``loader``: worker processes decode and augment each image every epoch (sslkit.data.loader): for data that
  does not fit in memory, and for augmentations that only exist on the CPU (RandAugment).

``auto`` takes the store when it fits the memory budget (on CUDA: the GPU's, then the RAM's), the loader
otherwise. The store was measured faster on CPUs too, whole training steps included: there the loader's
workers take cores from the training process (docs/scaling.md has the figures). The two paths draw their
random numbers differently, so a run keeps the path it started with when it is resumed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from sslkit.data.device_views import StoreViews
from sslkit.data.loader import default_workers
from sslkit.data.store import (StorePlan, check_room, default_store_dir, gigabytes, memory_budget, open_store,
                               plan_store)
from sslkit.data.views import View
from sslkit.errors import UsageError

DATA_PATHS = ("auto", "store", "loader")
STORE_PLACES = ("auto", "device", "pinned", "ram")


@dataclass(frozen=True)
class DataPath:
    name: str  # store | loader
    reason: str
    place: str | None = None  # the store's: device, pinned or ram

    def record(self) -> dict[str, str]:
        return {"data_path": self.name, "data_path_reason": self.reason}


def refuse_store(asked: str, cpu_only: str | None) -> None:
    """--data-path store cannot serve views that need the CPU (``cpu_only`` says why)."""
    if asked == "store" and cpu_only:
        raise UsageError(f"--data-path store: {cpu_only}; use --data-path loader")


def choose_data_path(asked: str, place: str, device: torch.device, nbytes, cpu_only: str | None = None,
                     saved: str | None = None) -> DataPath:
    """The path for a run: ``asked`` (auto | store | loader) with ``place`` (auto | device | pinned | ram) on
    ``device``; ``nbytes()`` gives the store's size (read from the files' headers, so only when needed);
    ``cpu_only`` says why the views need the CPU (an augmentation only it runs); ``saved`` is the path a resumed run
    recorded."""
    if saved and asked in ("auto", saved):
        asked, because = saved, "as recorded when the run started"
    elif saved:
        because = f"--data-path {asked}; the run started on the {saved} path, so its numbers will differ"
    else:
        because = f"--data-path {asked}"
    if asked == "loader":
        return DataPath("loader", because)
    if cpu_only:
        refuse_store(asked, cpu_only)
        return DataPath("loader", cpu_only)
    size = nbytes()
    where, what = _fitting_place(place, device, size)
    if where:
        return DataPath("store", because if asked == "store" else f"it fits in {what}", where)
    too_big = f"the decoded store needs {gigabytes(size)}, more than {what}"
    if asked == "store":
        raise UsageError(f"--data-path store: {too_big}; use a smaller --store-size, another --store-on, or "
                         "--data-path loader")
    return DataPath("loader", too_big)


def _fitting_place(place: str, device: torch.device, size: int) -> tuple[str | None, str]:
    """The first place ``place`` allows where ``size`` bytes fit the memory budget (None: none), and the
    last budget looked at, in words."""
    for where in _places(place, device):
        budget, what = memory_budget(where, device)
        if size <= budget:
            return where, what
    return None, what


def _places(place: str, device: torch.device) -> list[str]:
    if device.type != "cuda":
        if place == "pinned":
            raise UsageError("--store-on pinned: pinned memory only speeds up copies to a GPU; use ram or auto")
        return ["ram"]  # the CPU's device memory is RAM
    return ["device", "ram"] if place == "auto" else [place]


def training_data(dataset, views: tuple[View, ...], transform, train, device: torch.device,
                  cpu_only: str | None = None, saved: dict | None = None) -> tuple[object, dict]:
    """What the trainer takes for ``dataset`` (an ImageFolder) and the record of the decision for config.json:
    the store path's StoreViews of ``views``, or the dataset itself with the loader's ``transform``. ``train``
    is the run's TrainConfig; ``saved`` what a resumed run recorded."""
    short_side = train.store_size or max(view.size for view in views)
    if device.type == "cuda" and device.index is None:  # with torchrun, this process's own GPU
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    plans: list[StorePlan] = []

    def nbytes() -> int:
        plans.append(plan_store(dataset, short_side))
        return plans[-1].nbytes

    path = choose_data_path(train.data_path, train.store_on, device, nbytes, cpu_only, (saved or {}).get("data_path"))
    if path.name == "loader":
        dataset.transform = transform
        return dataset, path.record()
    plan = plans[-1] if plans else plan_store(dataset, short_side)
    folder = Path(train.store_dir) if train.store_dir else default_store_dir()
    workers = default_workers() if train.workers is None else train.workers
    check_room(plan, folder)
    layout = {"short_side": short_side, "height": plan.height, "width": plan.width, "images": plan.count,
              "bytes": plan.nbytes, "place": path.place}
    source = StoreViews(partial(open_store, dataset, plan, folder, workers + 1), views, path.place, plan.count)
    return source, {**path.record(), "store": layout}


def describe(decided: dict, workers: int) -> str:
    """The progress line's account of a run's data path, from what ``training_data`` recorded."""
    if decided["data_path"] == "loader":
        return f"data: loader, {workers} worker processes ({decided['data_path_reason']})"
    store = decided["store"]
    return (f"data: decoded store, {store['images']} images at short side {store['short_side']} px on a "
            f"{store['height']} x {store['width']} canvas, {gigabytes(store['bytes'])} in {store['place']}; views "
            f"made on the training device ({decided['data_path_reason']})")
