"""The settings of attention and reconstruct, apart from the code that draws (it imports torch), so that the
command line is built without it."""

from __future__ import annotations

from dataclasses import dataclass

from sslkit.config import KEYS, allow_partial_setting, device_setting
from sslkit.errors import UsageError
from sslkit.settings import Settings, one_of, pixels, seed_range, setting

def output_force_setting():
    return setting(False, "Write into an --out that holds files sslkit did not write there; they are never "
                          "overwritten (sslkit refuses instead).", flags=("--force",))


def _open_unit_interval(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise UsageError(f"--{name.replace('_', '-')} must lie between 0 and 1, not {value}")


POS_RESAMPLINGS = ("dino", "timm")  # sslkit.models.posembed.RESAMPLINGS, without importing torch


@dataclass(frozen=True)
class AttentionConfig(Settings):
    """sslkit attention: the last block's CLS attention maps of a ViT (sslkit.visualize.attention)."""

    img_size: int = setting(480, "Short side the images are resized to before cropping to multiples of the patch "
                                 "size.", check=pixels, cli_default=True)
    threshold: float | None = setting(None, "Also draw the masks keeping this share of the attention mass (DINO "
                                            "uses 0.6).", check=_open_unit_interval)
    pca: bool = setting(False, "Also draw pca.png per image: the first three principal components of the "
                               "final-norm patch features as red, green and blue, background black (DINOv2's "
                               "figure 1), fitted over all the images together so that alike parts get alike "
                               "colours; pca-foreground.png shows the patches kept as foreground. Holds every "
                               "image's patch features in memory, 2 bytes a value.", flags=("--pca",))
    checkpoint_key: str = setting("teacher", "teacher (the EMA network, default) or student.", check=one_of(*KEYS),
                                  cli_default=True)
    arch: str | None = setting(None, "timm name of a .pth file's model (inferred for ViT-S/B/L).")
    pos_resample: str | None = setting(
        None, "How the position embedding is resampled to an image's patch grid: dino (bicubic with DINO's +0.1 "
              "scale factors, as DINO's visualize_attention.py does) or timm (antialiased bicubic to the exact "
              "grid). Default: dino for official DINO weights, which were trained with it, timm otherwise. The maps "
              "of non-square images differ a lot between the two.", check=one_of(*POS_RESAMPLINGS))
    allow_partial: bool = allow_partial_setting()
    device: str = device_setting()
    force: bool = output_force_setting()


@dataclass(frozen=True)
class ReconstructConfig(Settings):
    """sslkit reconstruct: an MAE's masked-patch reconstructions (sslkit.visualize.reconstruct)."""

    mask_ratio: float | None = setting(None, "Share of patches hidden from the encoder (default: the model's, "
                                             "0.75).")
    seed: int = setting(0, "Seed of the random mask: the same seed hides the same patches.", check=seed_range,
                        cli_default=True)
    img_size: int | None = setting(None, "Side the images are resized and centre-cropped to (default: the model's "
                                         "training size; any multiple of the patch size).", check=pixels)
    norm_pix_loss: bool | None = setting(
        None, "Whether the model predicts per-patch-normalised pixels (default: from the run; for .pth files off for "
              "mae_visualize_* and on otherwise).")
    device: str = device_setting()
    force: bool = output_force_setting()
