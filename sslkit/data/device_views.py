"""The store path: training batches cut from the decoded store on the training device, no CPU work per image.

Each batch takes the sampler's next items (index, per-sample seed), gathers their stored images, and makes
every view of the method (sslkit.data.views.View) for the whole batch at once: a random resized crop and
flip per image (sslkit.data.geometry), then the colour operations (sslkit.data.photometric), all with
numbers hashed from the sample's seed. The batches have the loader's layout: ``(views, labels)``, views a
uint8 tensor for one view or a list of them.
"""

from __future__ import annotations

import torch

from sslkit.data import geometry
from sslkit.data.photometric import apply_photometric, colour_params
from sslkit.data.views import View


class StoreViews:
    """A decoded store (sslkit.data.store.Store), the views a method trains on and where the store is to
    live while training (``place``: device, pinned or ram): what the trainer takes in place of an ImageFolder
    to run on the store path. ``store`` may be a function that opens it: it is then opened (and decoded when
    not cached) when the first batch is asked for, after the run's checks and once it holds its folder."""

    def __init__(self, store, views: tuple[View, ...], place: str = "ram", count: int | None = None):
        self._store, self.views, self.place = store, tuple(views), place
        self.count = len(store.labels) if count is None else count
        self._placed_for: torch.device | None = None

    def __len__(self) -> int:
        return self.count

    def store(self, device: torch.device):
        """The store, opened if need be, in its place for training on ``device``."""
        if callable(self._store):
            self._store = self._store()
        if self._placed_for != device:  # once per run: each epoch's loader asks again
            if self.place != self._store.location:
                self._store = self._store.placed(self.place, device)
            self._placed_for = device
        return self._store

    def loader(self, sampler, batch_size: int, device: torch.device, apply=apply_photometric) -> "StoreLoader":
        """Batches of ``batch_size`` on ``device`` (the training process's: with torchrun, its own GPU)."""
        return StoreLoader(self, sampler, batch_size, device, apply)


class StoreLoader:
    """Iterates like a DataLoader over ``sampler`` (an EpochSampler: its epoch and start are read at each
    ``iter``), yielding batches already on ``device``."""

    def __init__(self, source: StoreViews, sampler, batch_size: int, device: torch.device, apply):
        self.source, self.views, self.sampler = source, source.views, sampler
        self.batch_size, self.device, self.apply = batch_size, device, apply

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self):
        self.store = self.source.store(self.device)
        # a store in host memory: the batch's images are gathered there, into pinned memory when it feeds a GPU
        self.pin = self.store.location in ("ram", "pinned") and self.device.type == "cuda"
        items = list(self.sampler)
        for start in range(0, len(items) - self.batch_size + 1, self.batch_size):
            indices, seeds = zip(*items[start : start + self.batch_size])
            indices, seeds = torch.tensor(indices), torch.tensor(seeds, dtype=torch.int64)
            if self.device.type == "cuda":  # a copy from pageable memory would wait for the GPU's queue
                indices, seeds = indices.pin_memory(), seeds.pin_memory()
            yield self.batch(indices, seeds)

    def batch(self, indices: torch.Tensor, seeds: torch.Tensor):
        store = self.store
        where = store.images.device
        picked = indices.to(where)
        images, sizes, transposed, labels = (self._gather(values, picked) for values in
                                             (store.images, store.sizes, store.transposed, store.labels))
        with torch.no_grad():
            views = make_views(images, sizes, transposed, seeds.to(self.device, non_blocking=True), self.views,
                               self.apply)
        return (views[0] if len(views) == 1 else views), labels

    def _gather(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``values[indices]`` on the training device. From host memory to a GPU through pinned memory: a copy
        from pageable memory would wait for the GPU's queue to empty."""
        if not self.pin:
            return values[indices].to(self.device, non_blocking=True)
        staged = torch.empty((len(indices), *values.shape[1:]), dtype=values.dtype, pin_memory=True)
        torch.index_select(values, 0, indices, out=staged)
        # pinned blocks come from PyTorch's caching host allocator, which keeps this one until the copy is done
        return staged.to(self.device, non_blocking=True)


def make_views(images: torch.Tensor, sizes: torch.Tensor, transposed: torch.Tensor, seeds: torch.Tensor,
               views: tuple[View, ...], apply=apply_photometric) -> list[torch.Tensor]:
    """Every view of each canvas image (B, 3, H, W) uint8, its stored (h, w) and orientation, from its seed:
    a list of uint8 (B, 3, size, size), one per view. Views of one size are resampled together."""
    height, width = images.shape[-2:]
    # the image's own height and width (a transposed image's canvas rows run along its width)
    own_h = torch.where(transposed, sizes[:, 1], sizes[:, 0])
    own_w = torch.where(transposed, sizes[:, 0], sizes[:, 1])
    made: list[torch.Tensor] = []
    start = 0
    while start < len(views):
        end = start
        while end < len(views) and views[end].size == views[start].size:
            end += 1
        numbers = [geometry.uniforms(seeds, v) for v in range(start, end)]
        rows, columns = zip(*(_weights(views[v], n, own_h, own_w, transposed, height, width)
                              for v, n in zip(range(start, end), numbers)))
        crops = geometry.resized_crops(images, torch.stack(rows, 1), torch.stack(columns, 1), transposed)
        for offset, n in enumerate(numbers):
            made.append(_coloured(crops[:, offset].contiguous(), views[start + offset], n, apply))
        start = end
    return made


def _weights(view: View, numbers: torch.Tensor, own_h, own_w, transposed, height: int, width: int):
    """The canvas rows' and columns' resampling weights of one view of every image."""
    top, left, h, w = geometry.crop_boxes(numbers, own_h, own_w, view.scale, view.ratio)
    mirror = geometry.flips(numbers)  # along the image's width: the canvas rows of a transposed image
    rows = geometry.resample_weights(torch.where(transposed, left, top), torch.where(transposed, w, h), view.size,
                                     height, mirror & transposed)
    columns = geometry.resample_weights(torch.where(transposed, top, left), torch.where(transposed, h, w),
                                        view.size, width, mirror & ~transposed)
    return rows, columns


def _coloured(crops: torch.Tensor, view: View, numbers: torch.Tensor, apply) -> torch.Tensor:
    colour = view.colour
    if colour is None:
        return crops
    params = colour_params(numbers[:, geometry.COLOUR:], colour.blur_p, colour.solarize_p, colour.kernel,
                           colour.sigma)
    return apply(crops, params, colour.kernel)
