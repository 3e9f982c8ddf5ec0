"""Supervised fine-tuning of a (pretrained) backbone with a linear head, by one of two recipes.

``semi-supervised`` (BYOL appendix C.1, after SimCLR appendix B.5): for few labels. SGD with Nesterov momentum
0.9, no weight decay or other regularisation, random resized crops and flips only, cosine to 0 without
warm-up, 60 epochs for sets the size of ImageNet's 1 % (about 13 images per class) and 30 for its 10 % (SimCLR),
and the lr chosen from BYOL's grid {0.005, 0.01, 0.02, 0.05, 0.1} on labelled images held out of the training
set (see sslkit.evaluate.lr_choice).

``mae`` (MAE's main_finetune.py): for large labelled sets, as below.

Layer-wise lr decay (MAE util/lr_decay.py, after BEiT): layer id 0 holds the patch embedding, CLS token and
position embedding, block i has id i + 1, and everything after the blocks (final norm, head) has id
depth + 1; a parameter's lr is scaled by ``decay ** (depth + 1 - id)``, so the head trains at the full lr and
the patch embedding at the smallest. Weight decay skips biases, norms and the model's no-weight-decay list
(a timm ViT's CLS token and position embedding).

Per batch: timm's mixup (alpha 0.8) or cutmix (alpha 1.0), one of the two per batch, with label smoothing 0.1
folded into the soft targets; random erasing (p 0.25) per image before it. RandAugment runs on the CPU
in the view (sslkit.data.views.finetune_view).
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn

from sslkit import config as cfg
from sslkit.config import TrainConfig
from sslkit.engine.method import StepOutput
from sslkit.errors import UsageError
from sslkit.evaluate.settings import FinetuneConfig
from sslkit.models.backbones import Normalize, feature_dim, is_vit, patch_size, prefers_channels_last

SEMI_SUPERVISED, MAE = "semi-supervised", "mae"
RECIPES = ("auto", SEMI_SUPERVISED, MAE)
SEMI_SUPERVISED_UP_TO = 200_000  # labelled images: BYOL fine-tunes ImageNet's 10 % (128,116) so, MAE all 1.28 M
SEMI_SUPERVISED_LRS = (0.005, 0.01, 0.02, 0.05, 0.1)  # BYOL's grid (appendix C.1)
# "no regularization (including weight decay)" (SimCLR B.5); "random crops with resize ... and random flips" (BYOL)
SEMI_SUPERVISED_OPTIONS = {"drop_path": 0.0, "smoothing": 0.0, "mixup": 0.0, "cutmix": 0.0, "randaug": "none",
                           "reprob": 0.0, "layer_decay": 1.0}
SEMI_SUPERVISED_TRAIN = {"optimizer": "sgd", "nesterov": True, "momentum": 0.9, "weight_decay": 0.0,
                         "warmup_epochs": 0.0, "min_lr": 0.0}
MAE_TRAIN = {"epochs": 100, "optimizer": "adamw", "weight_decay": 0.05, "min_lr": 1e-6, "betas": (0.9, 0.999)}
FEW_PER_CLASS = 20  # under this many labelled images per class: SimCLR's 1 % schedule (60 epochs), else its 10 % (30)


def choose_recipe(requested: str, num_images: int) -> tuple[str, str]:
    """The recipe ``--recipe`` names, or for ``auto`` the one that fits ``num_images`` labelled images; and why."""
    if requested != "auto":
        return requested, "as --recipe asks"
    if num_images <= SEMI_SUPERVISED_UP_TO:
        return SEMI_SUPERVISED, f"{num_images:,} labelled images (auto: up to {SEMI_SUPERVISED_UP_TO:,})"
    return MAE, f"{num_images:,} labelled images (auto: over {SEMI_SUPERVISED_UP_TO:,})"


def recipe_options(recipe: str) -> dict:
    """The FinetuneConfig values ``recipe`` sets (FinetuneConfig's own defaults are MAE's)."""
    return dict(SEMI_SUPERVISED_OPTIONS) if recipe == SEMI_SUPERVISED else {}


FINETUNE_TRAIN_FIELDS = ("epochs", "batch_size", "lr", "min_lr", "warmup_epochs", "weight_decay", "clip_grad",
                         "accum_steps", "device", "precision", "compile", "seed", "workers", "save_every", "log_every",
                         "force", "keep", "data_path", "store_size", "store_on", "store_dir", "logger", "optimizer",
                         "momentum", "nesterov", "betas", "eval_every")


def resolve(train: dict, options: dict, num_images: int, num_classes: int) -> tuple[TrainConfig, FinetuneConfig]:
    """The settings of a run on ``num_images`` labelled images of ``num_classes``: the TrainConfig fields given
    in ``train`` and the FinetuneConfig ones in ``options`` (its ``recipe`` chosen, not auto; other keys are
    ignored), with the recipe's presets for the rest. They come as dicts because a given value equal to a
    field's default must still win over the preset. Without --batch-size the batch suits small sets
    (:func:`auto_batch`); without --lr or --blr the semi-supervised recipe's lr is None, to be chosen on
    held-out labels."""
    recipe = options["recipe"]
    finetune = cfg.build(FinetuneConfig, {**recipe_options(recipe), **options})  # checks itself
    batch_size = train.get("batch_size") or auto_batch(num_images)
    blr = options.get("blr", finetune.blr if recipe == MAE else None)
    given = {k: train[k] for k in FINETUNE_TRAIN_FIELDS if k in train}
    train_cfg = train_settings(recipe, given, batch_size, blr, num_images, num_classes)
    if (finetune.mixup > 0 or finetune.cutmix > 0) and (batch_size // train_cfg.accum_steps) % 2:
        raise UsageError(f"mixup / cutmix pair each image with another: use an even --batch-size (not {batch_size})")
    return train_cfg, finetune


def auto_batch(num_images: int) -> int:
    """256, or for small labelled sets the largest power of two that still gives about 10 steps per epoch."""
    batch = 256
    while batch > 8 and batch * 10 > num_images:
        batch //= 2
    return batch


def train_settings(recipe: str, given: dict, batch_size: int, blr: float | None, num_images: int,
                   num_classes: int) -> TrainConfig:
    """The engine settings of a fine-tuning run by ``recipe``; the TrainConfig fields in ``given`` win. Without
    --lr the lr is ``blr`` x batch / 256, or None (to be chosen on held-out labels) when ``blr`` is None."""
    if recipe == SEMI_SUPERVISED:
        epochs = 60 if num_images < FEW_PER_CLASS * num_classes else 30
        preset = {**SEMI_SUPERVISED_TRAIN, "epochs": epochs}
    else:
        preset = dict(MAE_TRAIN)
    values = {"clip_grad": 0.0, "clip_per_param": False, **preset, **given, "batch_size": batch_size}
    train = cfg.build(TrainConfig, values)
    # MAE's 5 warm-up epochs of 100; a tenth of shorter runs
    return cfg.with_defaults(train, lr=None if blr is None else blr * batch_size / 256,
                             warmup_epochs=min(5.0, train.epochs / 10))


STEM = ("cls_token", "pos_embed", "patch_embed", "reg_token", "norm_pre")


def layer_id(name: str, depth: int) -> int:
    """MAE's layer id of a ViT backbone parameter (names as in timm); the head gets ``depth + 1``."""
    if name.startswith(STEM):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def default_layer_decay(backbone: nn.Module) -> float:
    """0.65 for ViT-B-sized and smaller (MAE's ViT-B value), 0.75 from 24 blocks (ViT-L, H); off for conv nets."""
    if not is_vit(backbone):
        return 1.0
    return 0.75 if len(backbone.blocks) >= 24 else 0.65


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets (mixed and smoothed labels), averaged over the batch."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


class Finetune(nn.Module):
    name = "finetune"

    def __init__(self, backbone: nn.Module, num_classes: int, options: FinetuneConfig, layer_decay: float,
                 arch: str, img_size: int, classes: list[str]):
        super().__init__()
        from timm.data import Mixup

        self.backbone = backbone
        self.head = nn.Linear(feature_dim(backbone), num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE's head init: start from near-zero logits
        nn.init.zeros_(self.head.bias)
        self.normalize = Normalize()
        self.channels_last = prefers_channels_last(backbone)
        self.options, self.layer_decay = options, layer_decay
        self.num_classes = num_classes
        self.mixup = None
        if options.mixup > 0 or options.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=options.mixup, cutmix_alpha=options.cutmix, prob=options.mixup_prob,
                               switch_prob=options.mixup_switch_prob, label_smoothing=options.smoothing,
                               num_classes=num_classes)
        self._erasing = None  # built on first use, for the device the batches arrive on
        self._metadata = {"arch": arch, "img_size": str(img_size), "classes": json.dumps(classes)}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of a uint8 image batch."""
        return self.head(self.backbone(self._input(images)))

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def training_step(self, batch) -> StepOutput:
        images, labels = batch
        x = self._input(images)
        if self.options.reprob > 0:
            x = self._random_erasing(x)
        if self.mixup is not None:
            x, targets = self.mixup(x, labels)
            loss = soft_cross_entropy(self.head(self.backbone(x)).float(), targets)
        else:
            logits = self.head(self.backbone(x)).float()
            loss = F.cross_entropy(logits, labels, label_smoothing=self.options.smoothing)
        return StepOutput(loss=loss)

    def _random_erasing(self, x: torch.Tensor) -> torch.Tensor:
        if self._erasing is None or self._erasing.device != x.device:
            from timm.data.random_erasing import RandomErasing

            self._erasing = RandomErasing(self.options.reprob, mode="pixel", device=x.device)
        return self._erasing(x)

    def param_groups(self) -> list[dict]:
        """One group per (layer id, decay or not) with the layer's lr scale."""
        depth = len(self.backbone.blocks) if is_vit(self.backbone) else 0
        named = [(n, p, layer_id(n, depth) if depth else 0) for n, p in self.backbone.named_parameters()]
        named += [(f"head.{n}", p, depth + 1) for n, p in self.head.named_parameters()]
        # MAE also exempts the model's no-weight-decay list (timm ViTs: cls_token, pos_embed, ...)
        exempt = set(self.backbone.no_weight_decay()) if hasattr(self.backbone, "no_weight_decay") else set()
        groups: dict[tuple[int, bool], dict] = {}
        for name, param, layer in named:
            if not param.requires_grad:
                continue
            decay = param.ndim > 1 and not name.endswith(".bias") and name not in exempt
            scale = self.layer_decay ** (depth + 1 - layer) if depth else 1.0
            group = groups.setdefault((layer, decay), {
                "params": [], "lr_scale": scale, "wd_scale": 1.0 if decay else 0.0, "lars_exclude": not decay,
                "layer_id": layer,
            })
            group["params"].append(param)
        return list(groups.values())

    # its one engine hook (sslkit.engine.method.HOOKS); the others would do nothing
    def checkpoint_metadata(self) -> dict[str, str]:
        patch = patch_size(self.backbone)
        return {**self._metadata, "patch_size": str(patch or ""), "backbones": json.dumps({"backbone": "backbone"})}
