"""DINO: self-distillation with no labels (Caron et al. 2021; facebookresearch/dino main_dino.py).

A student (backbone + DINO head) is trained to match, on every crop, the sharpened and centred output of an
EMA teacher on the *other* global crops. Loss: the mean over (teacher global view i, student view v != i)
pairs of the cross-entropy ``-softmax((t_i - c) / T_t) . log_softmax(s_v / T_s)``. Reference values are in
DESIGN.md section 4; the ``auto`` preset that keeps small runs from collapsing is described in docs/dino.md.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sslkit import console
from sslkit.config import ARCH_HELP, IMG_SIZE_HELP, RUN, TrainConfig, augment_on_setting, with_defaults
from sslkit.data.views import ViewSet, cpu_views, dino_plan, local_crop_size
from sslkit.engine.ema import ema_update
from sslkit.engine.method import Progress, StepOutput
from sslkit.engine.optim import ADAMW_BETAS, decay_groups
from sslkit.engine.schedules import cosine
from sslkit.errors import UsageError
from sslkit.models.backbones import Normalize, create_backbone, feature_dim, patch_size, prefers_channels_last
from sslkit.models.heads import DINOHead
from sslkit.settings import (Settings, at_least_zero, between_0_and_1, one_of, parse_bool, pixels, positive,
                             scale_range, setting)

PANEL, CROPS = "DINO", "Multi-crop"


@dataclass(frozen=True)
class DINOConfig(Settings):
    """DINO's settings under their official names (facebookresearch/dino main_dino.py); None: the preset's."""

    arch: str = setting("vit_small_patch16_224", ARCH_HELP, panel=RUN)
    img_size: int = setting(224, IMG_SIZE_HELP, panel=RUN, check=pixels)  # local crops scale with it
    preset: str = setting(
        "auto", "auto (default): out_dim, teacher temperature, lr and warm-up adapted to the data, batch and run "
                "length; imagenet: the official values. Explicit options always win.", panel=PANEL,
        check=one_of("auto", "imagenet"))
    out_dim: int | None = setting(
        None, "Prototypes K (official 65536; auto: images/16 between 1024 and 65536). Lower it if the teacher "
              "output is near-uniform.", panel=PANEL, check=positive)
    hidden_dim: int = setting(2048, check=positive)
    bottleneck_dim: int = setting(256, check=positive)
    norm_last_layer: bool = setting(
        True, "true (default): keep the last layer's weight-norm gain at 1, more stable; false: train it, better "
              "for ViT-S but can be unstable.", panel=PANEL, cli=str, parse=parse_bool)
    momentum_teacher: float | None = setting(
        None, "Teacher EMA momentum at the start, cosine to 1 (0.996). The README uses 0.9995 at batch 256; much "
              "lower values let the teacher turn uniform.", panel=PANEL, check=between_0_and_1)
    teacher_temp: float | None = setting(
        None, "Teacher temperature after warm-up (0.04; auto: 0.02 below 100k images, 0.07 for runs of 100+ epochs; "
              "above 0.07 is unstable).", panel=PANEL, check=positive)
    warmup_teacher_temp: float | None = setting(
        None, "Teacher temperature at epoch 0 (0.04; auto: 0.02 below 100k images). Lower it if the teacher turns "
              "uniform.", panel=PANEL, check=positive)
    warmup_teacher_temp_epochs: int | None = setting(
        None, "Epochs of linear teacher-temperature warm-up (0; 30 in the README's long runs).", panel=PANEL,
        check=at_least_zero)
    student_temp: float = setting(0.1, check=positive)
    center_momentum: float = setting(0.9, check=between_0_and_1)
    freeze_last_layer: int = setting(
        1, "Epochs during which the last layer gets no update (1). Raise it if the loss does not fall.", panel=PANEL,
        check=at_least_zero)
    drop_path_rate: float = setting(0.1, "Stochastic depth of the student ViT (0.1).", panel=PANEL,
                                    check=at_least_zero)
    global_crops_scale: tuple[float, float] = setting((0.4, 1.0), "Area range of the 2 global crops (0.4 1).",
                                                      panel=CROPS, check=scale_range)
    local_crops_number: int = setting(8, "Local crops per image (8; 0 disables multi-crop).", panel=CROPS,
                                      check=at_least_zero)
    local_crops_scale: tuple[float, float] = setting((0.05, 0.4), "Area range of the local crops (0.05 0.4).",
                                                     panel=CROPS, check=scale_range)
    local_crop_size: int | None = setting(
        None, "Side of the local crops (default: --img-size x 96/224 rounded to a multiple of the patch size, 16 "
              "for conv nets; 32 at 64 px, 98 at 224 px with 14-pixel patches).", panel=CROPS,
        check=pixels)
    augment_on: str = augment_on_setting()


# sslkit pretrain dino --help
HELP = (
    "DINO (Caron et al. 2021): a student matches, across multi-crop views, the sharpened and centred output of "
    "an EMA teacher.\n\n"
    "Defaults follow facebookresearch/dino: ViT-S/16 at 224 px, head 2048-2048-256 then out_dim prototypes, "
    "AdamW lr 5e-4 x batch/256 (cosine to 1e-6), weight decay 0.04 -> 0.4, per-parameter gradient clip 3.0, "
    "2 global crops (0.4-1) and 8 local crops (0.05-0.4) at 96/224 of --img-size, last layer frozen for the "
    "first epoch, drop path 0.1. --preset auto (the default) adapts out_dim, teacher temperature, lr and "
    "warm-up to the data set, batch and run length and prints its choice; --preset imagenet keeps the "
    "official values. Options also accept main_dino.py's spelling (--out_dim 65536)."
)
EXAMPLES = (
    "sslkit pretrain dino photos/ --out runs/dino --arch vit_tiny_patch16_224 --img-size 64 --epochs 10 "
    "--batch-size 64",
    "sslkit pretrain dino photos/ --out runs/dino-r18 --arch resnet18 --img-size 64 --local-crops-number 6",
    "sslkit pretrain dino photos/ --out runs/dino-more --continue-from dino_deitsmall16_checkpoint.pth --out-dim 65536",
    "sslkit pretrain dino /data/imagenet/train --out runs/vits16 --preset imagenet --teacher-temp 0.07 "
    "--warmup-teacher-temp-epochs 30 --norm-last-layer false --batch-size 1024 --accum-steps 4",
)


# How DINO's defaults for the shared training settings read in its --help.
SHARED_HELP = {
    "lr": "Peak learning rate (official 5e-4 x batch/256; auto below batch 1024: 2e-3 x sqrt(batch/1024)).",
    "min_lr": "Learning rate at the end of the cosine (default 1e-6).",
    "warmup_epochs": "Epochs of linear lr warm-up (default 10; auto: a tenth of runs under 100 epochs).",
    "weight_decay": "Weight decay at the start of its cosine (default 0.04); never on biases and norms.",
    "weight_decay_end": "Weight decay at the end (default 0.4).",
}

# main_dino.py defaults and README recommendations (ViT-S/16, ImageNet, 100+ epochs)
IMAGENET = dict(out_dim=65536, momentum_teacher=0.996, teacher_temp=0.04, warmup_teacher_temp=0.04,
                warmup_teacher_temp_epochs=0)
BASE_LR, MIN_LR, WARMUP_EPOCHS = 5e-4, 1e-6, 10
WEIGHT_DECAY, WEIGHT_DECAY_END, CLIP_GRAD = 0.04, 0.4, 3.0


SMALL_DATA = 100_000  # images; below this the random-init teacher's outputs are too alike at T = 0.04
REFERENCE_BATCH = 1024  # the batch of the official runs


def auto_preset(num_images: int, epochs: int, batch_size: int) -> dict:
    """The official values, adapted to the data set size, the batch and the run length (docs/dino.md).

    - out_dim: one prototype per ~16 images, a power of two between 1024 and 65536 (LightlyTrain scales the
      same way); 65536 prototypes for 3,000 images leave most of them unused.
    - teacher temperature: 0.02 below 100,000 images (the maintainers' advice for small data, dino#43): a
      random-init teacher gives nearly the same output for every image, and at 0.04 the centred output is
      close to uniform, so the student gets almost no signal; the README's 0.04 -> 0.07 over 30 epochs for
      runs of 100 epochs or more on larger sets; the code default 0.04 otherwise.
    - lr below batch 1024: the official peak at batch 1024 (2e-3) scaled by sqrt(batch / 1024), AdamW's
      square-root rule, instead of linearly (which leaves 1.25e-4 at batch 64, too little to learn in a
      short run); linear from 1024 up, as the official code.
    - momentum_teacher stays at the official 0.996: teachers made faster for short runs (0.98) turned
      uniform within two epochs in our measurements, for ResNet-18 and ViT-Tiny alike.
    - lr warm-up: 10 epochs, or a tenth of a run shorter than 100 epochs.
    """
    small, long_run = num_images < SMALL_DATA, epochs >= 100
    if batch_size < REFERENCE_BATCH:
        lr = BASE_LR * REFERENCE_BATCH / 256 * math.sqrt(max(batch_size, 1) / REFERENCE_BATCH)
    else:
        lr = BASE_LR * batch_size / 256
    return dict(
        out_dim=int(min(65536, max(1024, 2 ** round(math.log2(max(num_images, 1) / 16))))),
        momentum_teacher=0.996,
        teacher_temp=0.02 if small else 0.07 if long_run else 0.04,
        warmup_teacher_temp=0.02 if small else 0.04,
        warmup_teacher_temp_epochs=30 if long_run and not small else 0,
        warmup_epochs=min(WARMUP_EPOCHS, epochs / 10),
        lr=lr,
    )


def resolve(train: TrainConfig, options: DINOConfig, num_images: int) -> tuple[TrainConfig, DINOConfig]:
    """Fill every unset (None) setting from the preset; explicit settings always win."""
    chosen = auto_preset(num_images, train.epochs, train.batch_size) if options.preset == "auto" else \
        dict(IMAGENET, warmup_epochs=WARMUP_EPOCHS, lr=BASE_LR * train.batch_size / 256)
    train = with_defaults(train, optimizer="adamw", betas=ADAMW_BETAS, lr=chosen.pop("lr"), min_lr=MIN_LR,
                          warmup_epochs=chosen.pop("warmup_epochs"), weight_decay=WEIGHT_DECAY,
                          weight_decay_end=WEIGHT_DECAY_END, clip_grad=CLIP_GRAD, clip_per_param=True)
    options = with_defaults(options, **chosen)
    return train, options


def teacher_temperature(epoch: int, warmup_temp: float, final_temp: float, warmup_epochs: int) -> float:
    """Linear from ``warmup_temp`` at epoch 0 to ``final_temp`` at epoch ``warmup_epochs - 1``, then constant."""
    if epoch >= warmup_epochs:
        return final_temp
    return warmup_temp + (final_temp - warmup_temp) * epoch / max(warmup_epochs - 1, 1)


def dino_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, center: torch.Tensor,
              teacher_temp: float | torch.Tensor, student_temp: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """DINO's loss, in fp32, and the teacher's log-probabilities.

    ``student_logits``: (V, B, K), all crops, the G global ones first; ``teacher_logits``: (G, B, K). The
    cross-entropy of every (teacher view i, student view v != i) pair, averaged over the pairs.
    """
    log_student = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    log_teacher = F.log_softmax((teacher_logits.float() - center) / teacher_temp, dim=-1)
    batch = student_logits.shape[1]
    cross = -torch.einsum("tbk,vbk->tv", log_teacher.exp(), log_student) / batch  # (G, V) mean CE per pair
    same_view = torch.eye(*cross.shape, dtype=torch.bool, device=cross.device)
    pairs = cross.numel() - min(cross.shape)
    # a sum over the kept pairs, not cross[~same_view]: boolean indexing has a data-dependent shape, which
    # torch.compile cannot capture in one graph
    return cross.masked_fill(same_view, 0).sum() / pairs, log_teacher


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float) -> None:
    """EMA of the mean teacher output over the whole global batch (all processes when distributed)."""
    total = teacher_logits.float().reshape(-1, teacher_logits.shape[-1]).sum(dim=0)
    count = teacher_logits.numel() // teacher_logits.shape[-1]
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        count *= dist.get_world_size()
    center.mul_(momentum).add_(total / count, alpha=1 - momentum)


class DINO(nn.Module):
    name = "dino"
    fixed_tensors: tuple[str, ...] = ()  # state --continue-from leaves as built
    backbones = {"teacher": "teacher", "student": "backbone"}

    def __init__(self, options: DINOConfig):
        super().__init__()
        self.options = options
        # the student gets drop path; both ViTs take any crop size (position embedding resampled to it)
        self.backbone = create_backbone(options.arch, options.img_size, drop_path_rate=options.drop_path_rate,
                                        dynamic_img_size=True)
        self.head = DINOHead(feature_dim(self.backbone), options.out_dim, options.hidden_dim, options.bottleneck_dim,
                             options.norm_last_layer)
        self.teacher = create_backbone(options.arch, options.img_size, dynamic_img_size=True)
        self.teacher.load_state_dict(self.backbone.state_dict())
        self.teacher.requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, options.out_dim))
        # set per step from the epoch; a tensor so a compiled step does not recompile when it changes
        self.register_buffer("teacher_temp", torch.tensor(options.warmup_teacher_temp), persistent=False)
        self.normalize = Normalize()
        self.channels_last = prefers_channels_last(self.backbone)
        self.local_size = options.local_crop_size or local_crop_size(options.img_size, patch_size(self.backbone) or 16)
        self._check_crop_sizes()
        o = options
        console.info(
            f"dino preset {o.preset}: out_dim {o.out_dim}, momentum_teacher {o.momentum_teacher}, teacher_temp "
            f"{o.warmup_teacher_temp:g} -> {o.teacher_temp:g} over {o.warmup_teacher_temp_epochs} epochs, "
            f"{o.local_crops_number} local crops of {self.local_size} px (options given override these)"
        )

    def _check_crop_sizes(self) -> None:
        patch = patch_size(self.backbone)
        sizes = (self.options.img_size, self.local_size)
        if patch and any(size % patch for size in sizes):
            raise UsageError(f"crop sizes {sizes[0]} / {sizes[1]} px must be multiples of the patch size {patch}")

    @property
    def train_views(self):
        o = self.options
        return dino_plan(o.img_size, o.global_crops_scale, o.local_crops_number, o.local_crops_scale, self.local_size)

    @property
    def train_transform(self) -> ViewSet:
        return cpu_views(self.train_views, on_device=self.options.augment_on == "device")

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _student(self, crops: list[torch.Tensor]) -> torch.Tensor:
        """One backbone pass per crop resolution (equal-size crops batched together), then one head pass."""
        features, start = [], 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            features.append(self.backbone(self._input(torch.cat(crops[start:end]))))
            start = end
        return self.head(torch.cat(features))

    def training_step(self, batch) -> StepOutput:
        crops, _ = batch
        batch_size, views = crops[0].shape[0], len(crops)
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher(self._input(torch.cat(crops[:2]))))
        student = self._student(crops)
        loss, log_teacher = dino_loss(student.view(views, batch_size, -1), teacher.view(2, batch_size, -1),
                                      self.center, self.teacher_temp, self.options.student_temp)
        update_center(self.center, teacher, self.options.center_momentum)
        with torch.no_grad():
            entropy = -(log_teacher.exp() * log_teacher).sum(dim=-1).mean()
        # every teacher view is paired with the same number of student views, so mean CE - mean H = mean KL
        return StepOutput(loss, {"teacher_entropy": entropy, "kl": loss.detach() - entropy})

    def _teacher_temperature(self, epoch: int) -> float:
        o = self.options
        return teacher_temperature(epoch, o.warmup_teacher_temp, o.teacher_temp, o.warmup_teacher_temp_epochs)

    def start_step(self, progress: Progress) -> None:
        self.teacher_temp.fill_(self._teacher_temperature(progress.epoch))

    def last_layer_frozen(self, progress: Progress) -> bool:
        """Whether this step leaves the head's last layer as it is (the first --freeze-last-layer epochs)."""
        return progress.epoch < self.options.freeze_last_layer

    def before_optimizer_step(self, progress: Progress) -> None:
        # the last layer learns only after --freeze-last-layer epochs ("helps training", main_dino.py)
        if self.last_layer_frozen(progress):
            for param in self.head.last_layer.parameters():
                param.grad = None

    def student_parameters(self) -> list[torch.Tensor]:
        return [*self.backbone.parameters(), *self.head.parameters()]

    def teacher_parameters(self) -> list[torch.Tensor]:
        return [*self.teacher.parameters(), *self.teacher_head.parameters()]

    def scheduled(self, progress: Progress) -> dict[str, float]:
        """The scheduled values of this step, by name as logged; no side effect, so the dry run shows them."""
        # the temperature from the schedule, not the buffer: reading a GPU tensor here would sync every step
        return {"momentum": cosine(progress.step, progress.total_steps, self.options.momentum_teacher, 1.0),
                "teacher_temp": self._teacher_temperature(progress.epoch)}

    def after_optimizer_step(self, progress: Progress) -> dict[str, float]:
        values = self.scheduled(progress)
        ema_update(self.teacher_parameters(), self.student_parameters(), values["momentum"])
        return values

    def param_groups(self) -> list[dict]:
        student = nn.ModuleDict({"backbone": self.backbone, "head": self.head})
        return decay_groups(student.named_parameters())
