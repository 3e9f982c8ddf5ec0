"""View generators: the random augmentations each method trains on, and the evaluation transform.

The CPU side works on uint8 (PIL, then uint8 tensors) and ships uint8 batches, 4x fewer bytes than float
images; the model normalises them on its device (sslkit.models.backbones.Normalize).
"""

from __future__ import annotations

import torchvision.transforms.v2 as v2

from sslkit.data.photometric import DrawPhotometric

BICUBIC = v2.InterpolationMode.BICUBIC


def blur_kernel_size(img_size: int) -> int:
    """An odd kernel about a tenth of the image side: 23 px at 224, as in BYOL and DINO."""
    size = max(3, int(round(img_size / 10)))
    return size if size % 2 else size + 1


def augmented_view(
    size: int, scale: tuple[float, float], blur_p: float, solarize_p: float, resolution: float | None = None,
    on_device: bool = False,
) -> v2.Compose:
    """BYOL's and DINO's view: random resized crop, flip, colour jitter, grayscale, blur, solarize.

    The blur's sigma range (0.1, 2.0) px and kernel (23 px) are defined at ImageNet resolution; they scale
    with ``resolution`` (image side / 224, default ``size / 224``), so small images are blurred as much
    relative to their content as ImageNet images are. DINO's local crops pass the global crops' resolution.
    With ``on_device`` the view stops after the flip and carries the colour operations' random parameters,
    for the training device to apply (sslkit.data.photometric).
    """
    resolution = size / 224 if resolution is None else resolution
    geometry = [v2.RandomResizedCrop(size, scale=scale, interpolation=BICUBIC, antialias=True),
                v2.RandomHorizontalFlip()]
    kernel, sigma = blur_kernel_size(224 * resolution), (0.1 * resolution, 2.0 * resolution)
    if on_device:
        return v2.Compose([*geometry, v2.PILToTensor(), DrawPhotometric(blur_p, solarize_p, kernel, sigma)])
    return v2.Compose(
        [
            *geometry,
            # colour ops are cheaper on PIL images; the rest is done on uint8 tensors
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.PILToTensor(),
            v2.RandomApply([v2.GaussianBlur(kernel, sigma)], p=blur_p),
            v2.RandomSolarize(threshold=128, p=solarize_p),
        ]
    )


def byol_view(img_size: int, blur_p: float, solarize_p: float, on_device: bool = False) -> v2.Compose:
    """One of BYOL's two view distributions (Grill et al. 2020, Table 6)."""
    return augmented_view(img_size, (0.08, 1.0), blur_p, solarize_p, on_device=on_device)


class TwoViews:
    """Two differently augmented views of one image (BYOL's T and T')."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def __call__(self, image):
        return self.first(image), self.second(image)


def byol_views(img_size: int, on_device: bool = False) -> TwoViews:
    """T: blur always, never solarize; T': blur with p 0.1, solarize with p 0.2."""
    return TwoViews(byol_view(img_size, blur_p=1.0, solarize_p=0.0, on_device=on_device),
                    byol_view(img_size, blur_p=0.1, solarize_p=0.2, on_device=on_device))


def local_crop_size(img_size: int) -> int:
    """DINO's 96 px local crops at 224 px, scaled with the global size to a multiple of 16 (patch-friendly)."""
    return max(16, 16 * round(img_size * 96 / 224 / 16))


class MultiCrop:
    """DINO's multi-crop (Caron et al. 2021): 2 global crops then ``local_number`` local crops, as uint8 tensors.

    Global 1 is always blurred; global 2 is blurred with p 0.1 and solarized with p 0.2; local crops are
    blurred with p 0.5. Global crops come first: the teacher sees only them.
    """

    def __init__(self, img_size: int, global_scale: tuple[float, float], local_number: int,
                 local_scale: tuple[float, float], local_size: int | None = None, on_device: bool = False):
        resolution = img_size / 224
        self.local_size = local_size or local_crop_size(img_size)
        self.global1 = augmented_view(img_size, global_scale, blur_p=1.0, solarize_p=0.0, on_device=on_device)
        self.global2 = augmented_view(img_size, global_scale, blur_p=0.1, solarize_p=0.2, on_device=on_device)
        self.local = augmented_view(self.local_size, local_scale, blur_p=0.5, solarize_p=0.0, resolution=resolution,
                                    on_device=on_device)
        self.local_number = local_number

    def __call__(self, image) -> list:
        return [self.global1(image), self.global2(image), *(self.local(image) for _ in range(self.local_number))]


def crop_flip_view(img_size: int, scale: tuple[float, float] = (0.08, 1.0)) -> v2.Compose:
    """Random resized crop (bicubic) and horizontal flip: MAE's pretraining view (area 0.2-1) and the
    training view of DINO's and MAE's linear probes (area 0.08-1)."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(img_size, scale=scale, interpolation=BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
        ]
    )


def mae_view(img_size: int, scale: tuple[float, float] = (0.2, 1.0)) -> v2.Compose:
    """MAE's only augmentation: random resized crop (area 0.2-1, bicubic) and horizontal flip."""
    return crop_flip_view(img_size, scale)


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
