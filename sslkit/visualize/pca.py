"""PCA pictures of patch features, as in figure 1 of DINOv2 (Oquab et al. 2023): the same parts of different
images get the same colours.

Two PCAs, each fitted jointly over all the images:

1. over every patch feature; the first component, oriented so that the patches on the image border score
   lower on average than the others (the background is usually at the border), keeps the patches scoring
   above 0 (the mean) as the foreground;
2. over the foreground patches only; its first three components, each scaled between its 1st and 99th
   percentile over the foreground patches of all images and clipped, are red, green and blue. Background
   patches are black.

The fits run in float64 (the eigenvectors of the covariance, by ``torch.linalg.eigh``) over features kept in
float16, one image at a time, and every sign is fixed by a rule (:data:`SIGN_RULES`), so the pictures are the
same on every call and differ across machines only by float64 rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

COLOUR_COMPONENTS = 3
COLOUR_PERCENTILES = (1.0, 99.0)
COLOUR_SCALE = ("each component from its 1st to its 99th percentile over the foreground patches of all images to "
                "[0, 1], clipped")
SIGN_RULES = {
    "foreground": "the first component of the PCA of all patches is oriented so that the patches on the border "
                  "of the patch grid score lower on average than the others; where no grid has an inner patch, "
                  "by the colour rule",
    "colours": "each colour component is oriented so that the third moment of its scores is positive (the long "
               "tail, usually the rarer part, bright); where it is exactly 0, so that its largest coefficient "
               "is positive",
}


@dataclass(frozen=True)
class Pca:
    """Principal axes of a set of feature vectors, by decreasing variance (float64)."""

    mean: torch.Tensor  # (dim,)
    axes: torch.Tensor  # (components, dim), unit rows
    variances: torch.Tensor  # (components,)
    total_variance: float

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """The coordinates of ``features`` (n, dim) along the axes: (n, components), float64."""
        return (features.double() - self.mean) @ self.axes.T

    def explained(self) -> list[float]:
        """Each component's share of the total variance."""
        return (self.variances / max(self.total_variance, 1e-300)).tolist()

    def flipped(self, signs: torch.Tensor) -> Pca:
        """The same axes, each multiplied by its sign in ``signs`` (+1 or -1)."""
        return Pca(self.mean, self.axes * signs[:, None], self.variances, self.total_variance)


@dataclass(frozen=True)
class PatchPca:
    """The result of :func:`patch_pca`: per image, each patch's colour and whether it is foreground."""

    colours: list[torch.Tensor]  # per image (patches, 3) in [0, 1], black on the background
    foreground: list[torch.Tensor]  # per image (patches,) bool
    summary: dict


def _rows(features: list[torch.Tensor], keep: list[torch.Tensor] | None) -> Iterator[torch.Tensor]:
    """Each image's feature rows (where ``keep``) in float64, one image at a time, so that only the compact
    float16 copies of all images are held at once."""
    for index, rows in enumerate(features):
        rows = rows.double()
        yield rows if keep is None else rows[keep[index]]


def fit_pca(features: list[torch.Tensor], components: int, keep: list[torch.Tensor] | None = None) -> Pca:
    """The first ``components`` principal axes of the rows of all of ``features`` (per image (patches, dim))
    taken together, only those where ``keep`` is set if given: eigenvectors of the float64 covariance, centred
    in a first pass over the data, so that large feature means cost no precision."""
    count = sum(len(rows) for rows in _rows(features, keep))
    dim = features[0].shape[-1]
    mean = sum((rows.sum(dim=0) for rows in _rows(features, keep)), torch.zeros(dim, dtype=torch.float64))
    mean = mean / max(count, 1)
    covariance = torch.zeros(dim, dim, dtype=torch.float64)
    for rows in _rows(features, keep):
        centred = rows - mean
        covariance += centred.T @ centred
    covariance /= max(count - 1, 1)
    values, vectors = torch.linalg.eigh(covariance)  # ascending
    top = torch.arange(dim - 1, dim - 1 - min(components, dim), -1)
    return Pca(mean, vectors[:, top].T.contiguous(), values[top].clamp_min(0), float(covariance.trace()))


def border_patches(grid: tuple[int, int]) -> torch.Tensor:
    """(h * w,) bool, row by row: whether each patch of an h x w grid lies on its first or last row or column."""
    border = torch.ones(grid, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    return border.flatten()


def colour_signs(pca: Pca, scores: torch.Tensor) -> torch.Tensor:
    """+1 or -1 per component, so that its ``scores`` (n, components) have a positive third moment; an exact
    0 (a symmetric set) falls back to the sign of the component's largest coefficient."""
    skew = scores.pow(3).sum(dim=0)
    largest = pca.axes.gather(1, pca.axes.abs().argmax(dim=1, keepdim=True))[:, 0]
    return torch.where(skew != 0, skew.sign(), largest.sign())


def foreground_sign(pca: Pca, scores: torch.Tensor, grids: list[tuple[int, int]]) -> float:
    """+1 or -1 for the first component, whose all-patch ``scores`` (n,) are over the images of ``grids`` in
    turn: -1 when its border patches score higher on average than the inner ones. With no inner patch at all
    (grids of at most 2 rows or columns), :func:`colour_signs`'s rule."""
    border = torch.cat([border_patches(grid) for grid in grids])
    if border.all():
        return float(colour_signs(pca, scores[:, None])[0])
    return -1.0 if scores[border].mean() > scores[~border].mean() else 1.0


def colour_range(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per component, the 1st and 99th percentiles of ``scores`` (n, components): robust ends of the colour
    scale, which a few extreme patches (such as ViTs' high-norm artefact tokens) would otherwise squeeze."""
    if len(scores) == 0:
        return torch.zeros(scores.shape[1:], dtype=torch.float64), torch.ones(scores.shape[1:], dtype=torch.float64)
    low, high = np.percentile(scores.numpy(), COLOUR_PERCENTILES, axis=0)
    return torch.from_numpy(np.asarray(low)), torch.from_numpy(np.asarray(high))


def patch_pca(features: list[torch.Tensor], grids: list[tuple[int, int]], threshold: float = 0.0) -> PatchPca:
    """DINOv2's PCA pictures of ``features`` (per image (patches, dim), patches row by row over its grid):
    the foreground split by the first PCA at ``threshold`` and the colours of the second, both fitted jointly
    over all images (see the module's docstring)."""
    first = fit_pca(features, 1)
    first_scores = [first.scores(rows)[:, 0] for rows in features]
    sign = foreground_sign(first, torch.cat(first_scores), grids)
    foreground = [sign * scores > threshold for scores in first_scores]
    second = fit_pca(features, COLOUR_COMPONENTS, foreground)
    kept_scores = torch.cat([second.scores(rows[keep]) for rows, keep in zip(features, foreground)])
    signs = colour_signs(second, kept_scores)
    second, kept_scores = second.flipped(signs), kept_scores * signs
    low, high = colour_range(kept_scores)
    colours = []
    for rows, keep in zip(features, foreground):
        scaled = ((second.scores(rows) - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
        colours.append((scaled * keep[:, None]).float())
    summary = {
        "foreground": f"first component of the PCA of all patches above {threshold:g}",
        "foreground_explained_variance": round(first.explained()[0], 4),
        "components": second.axes.shape[0],
        "explained_variance": [round(share, 4) for share in second.explained()],
        "colour_scale": COLOUR_SCALE, "sign_rules": SIGN_RULES,
    }
    return PatchPca(colours, foreground, summary)


def pca_picture(colours: torch.Tensor, grid: tuple[int, int], patch: int) -> np.ndarray:
    """One image's patch colours (patches, 3) in [0, 1], each patch drawn as patch x patch pixels: uint8 RGB."""
    rgb = (colours.reshape(*grid, -1) * 255).round().to(torch.uint8).numpy()
    if rgb.shape[-1] < 3:  # features of fewer than 3 dimensions: the missing colours stay dark
        rgb = np.concatenate([rgb, np.zeros((*grid, 3 - rgb.shape[-1]), np.uint8)], axis=-1)
    return rgb.repeat(patch, axis=0).repeat(patch, axis=1)


def foreground_picture(foreground: torch.Tensor, grid: tuple[int, int], patch: int) -> np.ndarray:
    """The foreground patches white, the background black, at the image's size: uint8 RGB."""
    gray = foreground.reshape(grid).to(torch.uint8).numpy() * 255
    return np.repeat(gray[..., None], 3, axis=-1).repeat(patch, axis=0).repeat(patch, axis=1)
