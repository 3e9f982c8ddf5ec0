"""Linear probe: linear classifiers on frozen features, trained by the engine like any other method.

Recipes (anchors.md 2.1 and 2.2):
  dino  eval_linear.py: Linear initialised N(0, 0.01) with zero bias; SGD momentum 0.9, no weight decay,
        lr 1e-3 x batch / 256, cosine to 0, 100 epochs.
  mae   main_linprobe.py: BatchNorm1d without affine (eps 1e-6) before the Linear (trunc-normal std 0.01);
        LARS, no weight decay, lr 0.1 x batch / 256, 10 warm-up epochs, cosine to 0, 90 epochs.

Several heads with different learning rates train in one pass (one parameter group each, scaled to its own
lr): the features are computed once for all of them, and the summed loss gives each head its own gradient.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslkit.engine.method import Progress, StepOutput


@dataclass(frozen=True)
class Recipe:
    base_lr: float  # x batch / 256
    optimizer: str
    warmup_epochs: float
    epochs: int
    batch_norm: bool


RECIPES = {
    "dino": Recipe(base_lr=1e-3, optimizer="sgd", warmup_epochs=0, epochs=100, batch_norm=False),
    "mae": Recipe(base_lr=0.1, optimizer="lars", warmup_epochs=10, epochs=90, batch_norm=True),
}

# The lrs tried without --lr (x batch / 256), one head each, chosen on held-out training labels
# (sslkit.evaluate.lr_choice). DINOv2's eval grid runs 1e-5 to 0.1; the features of a random-init ResNet-18 at
# 64 px want 1-3 with SGD (docs/probe.md), so the dino grid reaches 30. The mae recipe's BatchNorm puts every
# model's features on one scale (1-10 there); its grid spans 0.01 to 30.
LR_GRIDS = {
    "dino": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
    "mae": (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
}


def lr_grid(recipe: str, batch_size: int) -> list[float]:
    return [lr * batch_size / 256 for lr in LR_GRIDS[recipe]]


class LinearProbe(nn.Module):
    """Linear heads on features; ``extractor`` (a frozen FeatureExtractor) when the batches hold images."""

    name = "linear"
    channels_last = False

    def __init__(self, dim: int, num_classes: int, lrs: list[float], recipe: str, extractor: nn.Module | None = None,
                 metadata: dict[str, str] | None = None):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if RECIPES[recipe].batch_norm else nn.Identity()
        self.heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in lrs)
        for head in self.heads:
            if recipe == "mae":
                nn.init.trunc_normal_(head.weight, std=0.01)
            else:
                nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
        self.lrs = list(lrs)
        self.backbone = nn.Identity()  # nothing here is a backbone worth exporting
        self._frozen = [extractor] if extractor is not None else []  # neither trained nor saved, see _apply
        self._metadata = metadata or {}

    def _apply(self, fn, recurse=True):
        # .to(device) must move the frozen extractor too, while state_dict() leaves it out of checkpoints
        for extractor in self._frozen:
            extractor._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of every head for a batch of features: (heads, batch, classes)."""
        z = self.norm(features.float())
        return torch.stack([head(z) for head in self.heads])

    def training_step(self, batch) -> StepOutput:
        inputs, labels = batch
        if self._frozen:  # image batches (--augment): features of this epoch's random crops
            with torch.no_grad():
                inputs = self._frozen[0](inputs)
        logits = self(inputs).float()
        losses = torch.stack([F.cross_entropy(head_logits, labels) for head_logits in logits])
        return StepOutput(loss=losses.sum(), logs={"mean_head_loss": losses.mean().detach()})

    @torch.no_grad()
    def score(self, features: torch.Tensor, labels: torch.Tensor, chunk: int = 4096) -> list[dict[str, float]]:
        """Top-1 / top-5 accuracy (percent) and loss of each head on precomputed ``features``."""
        hits = torch.zeros(len(self.heads), 2, device=features.device)
        loss = torch.zeros(len(self.heads), device=features.device)
        top_n = min(5, self.heads[0].out_features)
        for start in range(0, len(features), chunk):
            logits = self(features[start : start + chunk]).float()
            target = labels[start : start + chunk]
            predicted = logits.topk(top_n, dim=-1).indices
            correct = predicted == target[None, :, None]
            hits[:, 0] += correct[..., 0].sum(dim=1)
            hits[:, 1] += correct.any(dim=-1).sum(dim=1)
            loss += F.cross_entropy(logits.flatten(0, 1), target.repeat(len(self.heads)), reduction="none").view(
                len(self.heads), -1).sum(dim=1)
        hits, loss = (100.0 * hits / len(features)).tolist(), (loss / len(features)).tolist()
        return [{"top1": round(h[0], 2), "top5": round(h[1], 2), "loss": round(l, 5)} for h, l in zip(hits, loss)]

    # ------------------------------------------------------------------ engine hooks
    def start_step(self, progress: Progress) -> None:
        pass

    def before_optimizer_step(self, progress: Progress) -> None:
        pass

    def after_optimizer_step(self, progress: Progress) -> dict[str, float]:
        return {}

    def scheduled(self, progress: Progress) -> dict[str, float]:
        return {}

    def param_groups(self) -> list[dict]:
        groups = []
        for lr, head in zip(self.lrs, self.heads):
            scale = lr / self.lrs[0]
            groups.append({"params": [head.weight], "wd_scale": 0.0, "lars_exclude": False, "lr_scale": scale})
            groups.append({"params": [head.bias], "wd_scale": 0.0, "lars_exclude": True, "lr_scale": scale})
        return groups

    def checkpoint_metadata(self) -> dict[str, str]:
        return {**self._metadata, "backbones": json.dumps({}), "head_lrs": json.dumps(self.lrs)}
