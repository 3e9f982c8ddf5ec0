"""View generators: the random augmentations each method trains on, and the evaluation transform.

The CPU side works on uint8 (PIL, then uint8 tensors) and ships uint8 batches, 4x fewer bytes than float
images; the model normalises them on its device (sslkit.models.backbones.Normalize).
"""

from __future__ import annotations

import torchvision.transforms.v2 as v2

BICUBIC = v2.InterpolationMode.BICUBIC


def blur_kernel_size(img_size: int) -> int:
    """An odd kernel about a tenth of the image side: 23 px at 224, as in BYOL and DINO."""
    size = max(3, int(round(img_size / 10)))
    return size if size % 2 else size + 1


def byol_view(img_size: int, blur_p: float, solarize_p: float) -> v2.Compose:
    """One of BYOL's two view distributions (Grill et al. 2020, Table 6).

    The blur's sigma range (0.1, 2.0) px is defined at 224 px; it scales with ``img_size`` like the
    kernel, so small images are blurred as much relative to their size as ImageNet images are.
    """
    sigma_scale = img_size / 224
    return v2.Compose(
        [
            v2.RandomResizedCrop(img_size, scale=(0.08, 1.0), interpolation=BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(),
            # colour ops are cheaper on PIL images; the rest is done on uint8 tensors
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.PILToTensor(),
            v2.RandomApply([v2.GaussianBlur(blur_kernel_size(img_size), (0.1 * sigma_scale, 2.0 * sigma_scale))], p=blur_p),
            v2.RandomSolarize(threshold=128, p=solarize_p),
        ]
    )


class TwoViews:
    """Two differently augmented views of one image (BYOL's T and T')."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def __call__(self, image):
        return self.first(image), self.second(image)


def byol_views(img_size: int) -> TwoViews:
    """T: blur always, never solarize; T': blur with p 0.1, solarize with p 0.2."""
    return TwoViews(byol_view(img_size, blur_p=1.0, solarize_p=0.0), byol_view(img_size, blur_p=0.1, solarize_p=0.2))


def eval_transform(img_size: int) -> v2.Compose:
    """Resize the short side to img_size * 256/224, centre-crop img_size (224 from 256 at full size)."""
    return v2.Compose(
        [
            v2.Resize(int(round(img_size * 256 / 224)), interpolation=BICUBIC, antialias=True),
            v2.CenterCrop(img_size),
            v2.PILToTensor(),
        ]
    )
