"""BYOL: Bootstrap Your Own Latent (Grill et al. 2020; deepmind-research/byol).

An online network (backbone, projector, predictor) predicts the target network's projection of another view
of the same image; the target is an exponential moving average of the online backbone and projector. Loss per
pair: ``2 - 2 cos(q, z')``, summed over both view orders. Reference values are in DESIGN.md section 4.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslkit.config import ARCH_HELP, IMG_SIZE_HELP, RUN, TrainConfig, augment_on_setting, with_defaults
from sslkit.data.views import byol_plan, cpu_views
from sslkit.engine.ema import ema_update
from sslkit.engine.method import Progress, StepOutput
from sslkit.engine.optim import ADAMW_BETAS, decay_groups
from sslkit.engine.schedules import cosine
from sslkit.models.backbones import Normalize, create_backbone, feature_dim, prefers_channels_last
from sslkit.models.heads import MLP
from sslkit.settings import Settings, between_0_and_1, pixels, positive, setting

# byol/configs/byol.py: presets by run length, epochs -> (base lr for LARS, weight decay, tau_base)
PRESETS = {40: (0.45, 1e-6, 0.97), 100: (0.45, 1e-6, 0.99), 300: (0.3, 1e-6, 0.99), 1000: (0.2, 1.5e-6, 0.996)}
OFFICIAL_WARMUP_EPOCHS = 10
# AdamW is not in the paper: sslkit's fallback for small batches, where LARS's trust ratio is noisy
ADAMW_BASE_LR, ADAMW_WEIGHT_DECAY = 1e-3, 1e-4
SGD_BASE_LR = 0.05


PANEL = "BYOL"


@dataclass(frozen=True)
class BYOLConfig(Settings):
    arch: str = setting("resnet50", ARCH_HELP, panel=RUN)
    img_size: int = setting(224, IMG_SIZE_HELP, panel=RUN, check=pixels)
    projector_hidden_dim: int = setting(4096, "Hidden width of projector and predictor MLPs (default {default}).",
                                        panel=PANEL, check=positive)
    projector_dim: int = setting(256, "Output width of projector and predictor (default {default}).", panel=PANEL,
                                 check=positive)
    predictor_hidden_dim: int = setting(4096, "Hidden width of the predictor (default {default}).", panel=PANEL,
                                        check=positive)
    tau_base: float | None = setting(
        None, "Start of the target EMA momentum, cosine to 1 (default: the official preset for the run length: 0.97 "
              "up to 40 epochs, 0.99 up to 300, 0.996 beyond). Lower it if the loss stalls on a short run.",
        panel=PANEL, check=between_0_and_1)
    augment_on: str = augment_on_setting()


# sslkit pretrain byol --help
HELP = (
    "BYOL (Grill et al. 2020): an online network predicts what an EMA target network makes of another view "
    "of the same image.\n\n"
    "Defaults follow the paper and DeepMind's code: ResNet-50 at 224 px, projector and predictor 4096-256, "
    "LARS with lr 0.2 x batch/256 (0.45 for runs of up to 100 epochs), weight decay 1.5e-6 off biases and "
    "BatchNorm, 10 warm-up epochs then cosine, target EMA momentum from tau_base to 1. For batches under "
    "~256, --optimizer adamw (lr 1e-3 x batch/256, weight decay 1e-4) is the alternative."
)
EXAMPLES = (
    "sslkit pretrain byol photos/ --out runs/byol --arch resnet18 --img-size 64 --epochs 10 --batch-size 64",
    "sslkit pretrain byol photos/ --out runs/byol --resume",
    "sslkit pretrain byol photos/ --out runs/byol-ft --continue-from resnet50-torchvision.pth --epochs 20",
    "sslkit pretrain byol /data/imagenet/train --out runs/r50 --epochs 300 --batch-size 4096 --accum-steps 8",
)


def preset(epochs: int) -> tuple[float, float, float]:
    """The official preset of the shortest schedule that covers ``epochs`` (the 1000-epoch one beyond)."""
    for length in sorted(PRESETS):
        if epochs <= length:
            return PRESETS[length]
    return PRESETS[1000]


def resolve(train: TrainConfig, options: BYOLConfig, num_images: int) -> tuple[TrainConfig, BYOLConfig]:
    """Fill every unset (None) setting from the official presets; see docs/pretrain-byol.md for the table."""
    base_lr, weight_decay, tau_base = preset(train.epochs)
    optimizer = train.optimizer or "lars"
    if optimizer == "adamw":
        base_lr, weight_decay = ADAMW_BASE_LR, ADAMW_WEIGHT_DECAY
    elif optimizer == "sgd":
        base_lr = SGD_BASE_LR
    # warm-up: 10 epochs as the official runs (40 to 1000 epochs); a quarter of the run when shorter than 40
    train = with_defaults(train, optimizer=optimizer, betas=ADAMW_BETAS, lr=base_lr * train.batch_size / 256,
                          weight_decay=weight_decay, min_lr=0.0, clip_grad=0.0, clip_per_param=False,
                          warmup_epochs=min(OFFICIAL_WARMUP_EPOCHS, train.epochs / 4))
    options = with_defaults(options, tau_base=tau_base)
    return train, options


def regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``2 - 2 cos(prediction, target)`` per sample (the normalised MSE), computed in fp32."""
    prediction = F.normalize(prediction.float(), dim=-1)
    target = F.normalize(target.float(), dim=-1)
    return 2 - 2 * (prediction * target).sum(dim=-1)


class BYOL(nn.Module):
    name = "byol"
    fixed_tensors: tuple[str, ...] = ()  # state --continue-from leaves as built
    # the paper keeps the online encoder; its EMA (the target) is evaluated by default here
    backbones = {"teacher": "target_backbone", "student": "backbone"}

    def __init__(self, options: BYOLConfig):
        super().__init__()
        self.options = options
        self.backbone = create_backbone(options.arch, options.img_size)
        dim = feature_dim(self.backbone)
        self.projector = MLP(dim, options.projector_hidden_dim, options.projector_dim)
        self.predictor = MLP(options.projector_dim, options.predictor_hidden_dim, options.projector_dim)
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.normalize = Normalize()
        self.channels_last = prefers_channels_last(self.backbone)

    @property
    def train_views(self):
        return byol_plan(self.options.img_size)

    @property
    def train_transform(self):
        return cpu_views(self.train_views, on_device=self.options.augment_on == "device")

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def training_step(self, batch) -> StepOutput:
        (view1, view2), _ = batch
        x1, x2 = self._input(view1), self._input(view2)
        # each view is its own forward pass, so BatchNorm statistics are per view as in the official code
        q1 = self.predictor(self.projector(self.backbone(x1)))
        q2 = self.predictor(self.projector(self.backbone(x2)))
        with torch.no_grad():
            z1 = self.target_projector(self.target_backbone(x1))
            z2 = self.target_projector(self.target_backbone(x2))
        loss = (regression_loss(q1, z2) + regression_loss(q2, z1)).mean()
        return StepOutput(loss)

    def online_parameters(self) -> list[torch.Tensor]:
        return [*self.backbone.parameters(), *self.projector.parameters()]

    def target_parameters(self) -> list[torch.Tensor]:
        return [*self.target_backbone.parameters(), *self.target_projector.parameters()]

    def scheduled(self, progress: Progress) -> dict[str, float]:
        """The scheduled values of this step, by name as logged; no side effect, so the dry run shows them."""
        # tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, per step k of K
        return {"tau": cosine(progress.step, progress.total_steps, self.options.tau_base, 1.0)}

    def after_optimizer_step(self, progress: Progress) -> dict[str, float]:
        values = self.scheduled(progress)
        ema_update(self.target_parameters(), self.online_parameters(), values["tau"])
        return values

    def param_groups(self) -> list[dict]:
        online = nn.ModuleDict({"backbone": self.backbone, "projector": self.projector, "predictor": self.predictor})
        return decay_groups(online.named_parameters())
