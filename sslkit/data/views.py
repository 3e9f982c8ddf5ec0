"""View generators: the random augmentations each method trains on, and the evaluation transform.

A method declares its views once (``View``: crop size and area, aspect ratios, ``Colour``); the loader path
builds torchvision transforms from them here (``cpu_view``), the store path makes the same views on the
training device (sslkit.data.device_views). The CPU side works on uint8 (PIL, then uint8 tensors) and ships
uint8 batches, 4x fewer bytes than float images; the model normalises them on its device
(sslkit.models.backbones.Normalize).
"""

from __future__ import annotations

from dataclasses import dataclass

import torchvision.transforms.v2 as v2

from sslkit.data.photometric import DrawPhotometric

BICUBIC = v2.InterpolationMode.BICUBIC


def blur_kernel_size(img_size: int) -> int:
    """An odd kernel about a tenth of the image side: 23 px at 224, as in BYOL and DINO."""
    size = max(3, int(round(img_size / 10)))
    return size if size % 2 else size + 1


@dataclass(frozen=True)
class Colour:
    """BYOL's and DINO's colour augmentations of a view: jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale
    with p 0.2, Gaussian blur (``kernel`` px, sigma uniform in ``sigma``) with p ``blur_p``, solarize (128)
    with p ``solarize_p``."""

    blur_p: float
    solarize_p: float
    kernel: int
    sigma: tuple[float, float]


@dataclass(frozen=True)
class View:
    """One random view of an image: a random resized crop to ``size`` (area fraction in ``scale``, aspect
    ratio in ``ratio``), a horizontal flip with p 0.5, then ``colour`` (None: none). The one declaration of
    a method's augmentation: the loader path builds torchvision transforms from it (``cpu_view``), the
    decoded store draws the same distributions on the device (sslkit.data.device_views)."""

    size: int
    scale: tuple[float, float]
    colour: Colour | None = None
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


def colour_view(size: int, scale: tuple[float, float], blur_p: float, solarize_p: float,
                resolution: float | None = None) -> View:
    """BYOL's and DINO's view: crop, flip, colour jitter, grayscale, blur, solarize.

    The blur's sigma range (0.1, 2.0) px and kernel (23 px) are defined at ImageNet resolution; they scale
    with ``resolution`` (image side / 224, default ``size / 224``), so small images are blurred as much
    relative to their content as ImageNet images are. DINO's local crops pass the global crops' resolution.
    """
    resolution = size / 224 if resolution is None else resolution
    colour = Colour(blur_p, solarize_p, blur_kernel_size(224 * resolution), (0.1 * resolution, 2.0 * resolution))
    return View(size, scale, colour)


def cpu_view(view: View, on_device: bool = False) -> v2.Compose:
    """The loader path's torchvision transform of ``view``, from a PIL image to a uint8 tensor. With
    ``on_device`` it stops after the flip and carries the colour operations' random parameters, for the
    training device to apply (sslkit.data.photometric)."""
    geometry = [v2.RandomResizedCrop(view.size, scale=view.scale, ratio=view.ratio, interpolation=BICUBIC,
                                     antialias=True),
                v2.RandomHorizontalFlip()]
    colour = view.colour
    if colour is None:
        return v2.Compose([*geometry, v2.PILToTensor()])
    if on_device:
        return v2.Compose([*geometry, v2.PILToTensor(),
                           DrawPhotometric(colour.blur_p, colour.solarize_p, colour.kernel, colour.sigma)])
    return v2.Compose(
        [
            *geometry,
            # colour ops are cheaper on PIL images; the rest is done on uint8 tensors
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.PILToTensor(),
            v2.RandomApply([v2.GaussianBlur(colour.kernel, colour.sigma)], p=colour.blur_p),
            v2.RandomSolarize(threshold=128, p=colour.solarize_p),
        ]
    )


class ViewSet:
    """Several views of one image, in order, as a list (BYOL's two, DINO's 2 + N crops)."""

    def __init__(self, views: tuple[View, ...], on_device: bool = False):
        self.views = views
        self.transforms = [cpu_view(view, on_device) for view in views]

    def __call__(self, image) -> list:
        return [transform(image) for transform in self.transforms]


def cpu_views(views: tuple[View, ...], on_device: bool = False):
    """The loader path's transform of a method's views: one view's transform, or a ViewSet."""
    return cpu_view(views[0], on_device) if len(views) == 1 else ViewSet(views, on_device)


def byol_plan(img_size: int) -> tuple[View, View]:
    """BYOL's two view distributions (Grill et al. 2020, Table 6). T: blur always, never solarize;
    T': blur with p 0.1, solarize with p 0.2."""
    return (colour_view(img_size, (0.08, 1.0), blur_p=1.0, solarize_p=0.0),
            colour_view(img_size, (0.08, 1.0), blur_p=0.1, solarize_p=0.2))


def byol_views(img_size: int, on_device: bool = False) -> ViewSet:
    return ViewSet(byol_plan(img_size), on_device)


def local_crop_size(img_size: int, patch: int = 16) -> int:
    """DINO's 96 px local crops at 224 px, scaled with the global size to a multiple of the patch size (16 for
    conv nets): 98 px for a ViT with 14-pixel patches, DINOv2's own local crops."""
    return max(patch, patch * round(img_size * 96 / 224 / patch))


def dino_plan(img_size: int, global_scale: tuple[float, float], local_number: int,
              local_scale: tuple[float, float], local_size: int | None = None) -> tuple[View, ...]:
    """DINO's multi-crop (Caron et al. 2021): 2 global crops then ``local_number`` local crops.

    Global 1 is always blurred; global 2 is blurred with p 0.1 and solarized with p 0.2; local crops are
    blurred with p 0.5. Global crops come first: the teacher sees only them.
    """
    resolution = img_size / 224
    local = colour_view(local_size or local_crop_size(img_size), local_scale, blur_p=0.5, solarize_p=0.0,
                        resolution=resolution)
    return (colour_view(img_size, global_scale, blur_p=1.0, solarize_p=0.0),
            colour_view(img_size, global_scale, blur_p=0.1, solarize_p=0.2),
            *(local for _ in range(local_number)))


class MultiCrop(ViewSet):
    """DINO's multi-crop as a loader transform: a list of uint8 tensors (``dino_plan``)."""

    def __init__(self, img_size: int, global_scale: tuple[float, float], local_number: int,
                 local_scale: tuple[float, float], local_size: int | None = None, on_device: bool = False):
        super().__init__(dino_plan(img_size, global_scale, local_number, local_scale, local_size), on_device)
        self.local_size = local_size or local_crop_size(img_size)
        self.local_number = local_number


def crop_flip(img_size: int, scale: tuple[float, float] = (0.08, 1.0)) -> View:
    """Random resized crop (bicubic) and horizontal flip: MAE's pretraining view (area 0.2-1) and the
    training view of the linear probes and of fine-tuning without RandAugment (area 0.08-1)."""
    return View(img_size, scale)


def crop_flip_view(img_size: int, scale: tuple[float, float] = (0.08, 1.0)) -> v2.Compose:
    return cpu_view(crop_flip(img_size, scale))


def finetune_view(img_size: int, randaug: str | None) -> v2.Compose:
    """MAE's fine-tuning view: random resized crop (area 0.08-1, bicubic), flip and timm's RandAugment
    (``rand-m9-mstd0.5-inc1``: 2 ops of magnitude 9 with std 0.5, increasing severity); None: no RandAugment."""
    steps = [v2.RandomResizedCrop(img_size, scale=(0.08, 1.0), interpolation=BICUBIC, antialias=True),
             v2.RandomHorizontalFlip()]
    if randaug:
        from timm.data.auto_augment import rand_augment_transform

        mean = tuple(round(255 * m) for m in (0.485, 0.456, 0.406))  # fill colour of rotations and shears
        # at magnitude 10 timm's increasing posterize keeps 0 bits, which Pillow >= 12 refuses; 9.99 keeps 1
        hparams = {"translate_const": int(img_size * 0.45), "img_mean": mean, "magnitude_max": 9.99}
        steps.append(rand_augment_transform(randaug, hparams))
    return v2.Compose([*steps, v2.PILToTensor()])


def square_transform(img_size: int) -> v2.Compose:
    """Resize to img_size x img_size, whatever the aspect ratio, and crop nothing (DINO's copy detection)."""
    return v2.Compose([v2.Resize((img_size, img_size), interpolation=BICUBIC, antialias=True), v2.PILToTensor()])


def eval_transform(img_size: int) -> v2.Compose:
    """Resize the short side to img_size * 256/224, centre-crop img_size (224 from 256 at full size)."""
    return v2.Compose(
        [
            v2.Resize(int(round(img_size * 256 / 224)), interpolation=BICUBIC, antialias=True),
            v2.CenterCrop(img_size),
            v2.PILToTensor(),
        ]
    )
