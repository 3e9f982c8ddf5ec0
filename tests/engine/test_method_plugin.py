"""A method defined entirely here, outside the package (its settings, its module, its loss), registered the way
another package would register one: an entry point in the group ``sslkit.methods``. It gets a working
``sslkit pretrain toy`` with help, --config, checkpoints and a bit-exact resume, and no file of sslkit changes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from sslkit.config import TrainConfig, with_defaults
from sslkit.data.views import cpu_views, crop_flip
from sslkit.engine.method import StepOutput
from sslkit.engine.optim import decay_groups
from sslkit.methods import MethodSpec
from sslkit.settings import Settings, pixels, positive, setting
from tests.conftest import make_folder

ROOT = Path(__file__).resolve().parents[2]
PANEL = "Toy"


@dataclass(frozen=True)
class ToyConfig(Settings):
    arch: str = setting("toy", "The toy network (the only one).", panel=PANEL)
    img_size: int = setting(16, "Side of the training crops in pixels (default {default}).", panel=PANEL,
                            check=pixels)
    width: int = setting(8, "Channels of the toy network (default {default}).", panel=PANEL, check=positive)


class ToyNet(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.num_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x)).mean(dim=(2, 3))


class Toy(nn.Module):
    """Predicts the mean colour of its crop: a loss with a known minimum, no labels."""

    name = "toy"
    backbones = {"encoder": "backbone"}
    channels_last = False
    fixed_tensors = ()

    def __init__(self, options: ToyConfig):
        super().__init__()
        self.options = options
        self.backbone = ToyNet(options.width)
        self.head = nn.Linear(options.width, 3)

    @property
    def train_views(self):
        return (crop_flip(self.options.img_size, (0.5, 1.0)),)

    @property
    def train_transform(self):
        return cpu_views(self.train_views)

    def training_step(self, batch) -> StepOutput:
        images, _ = batch
        x = images.float() / 255
        return StepOutput(F.mse_loss(self.head(self.backbone(x)), x.mean(dim=(2, 3))))

    def param_groups(self) -> list[dict]:
        return decay_groups(self.named_parameters())

    def after_optimizer_step(self, progress) -> dict[str, float]:
        if os.environ.get("TOY_INTERRUPT_AT") == str(progress.step):  # a Ctrl-C after this step
            signal.raise_signal(signal.SIGINT)
        return {}


def resolve(train: TrainConfig, options: ToyConfig, num_images: int) -> tuple[TrainConfig, ToyConfig]:
    return with_defaults(train, optimizer="adamw", betas=(0.9, 0.999), lr=1e-2, min_lr=0.0, warmup_epochs=0.0,
                         weight_decay=0.0, clip_grad=0.0, clip_per_param=False), options


TOY = MethodSpec("toy", ToyConfig, Toy, resolve, help="A toy method: predict each crop's mean colour.",
                 examples=("sslkit pretrain toy photos/ --out runs/toy --width 4",), not_taken=("momentum",))


def _plugin(site: Path) -> Path:
    """An installed distribution whose only content is the entry point naming TOY."""
    info = site / "toy_method-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-method\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[sslkit.methods]\ntoy = {__name__}:TOY\n")
    return site


def _sslkit(site: Path, *args, interrupt_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)]), "COLUMNS": "200"}
    env.pop("TOY_INTERRUPT_AT", None)
    if interrupt_at is not None:
        env["TOY_INTERRUPT_AT"] = str(interrupt_at)
    return subprocess.run([sys.executable, "-m", "sslkit", *map(str, args)], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=300)


def test_a_method_from_another_package_gets_its_pretrain_command(tmp_path):
    site, data = _plugin(tmp_path / "site"), make_folder(tmp_path / "data", classes=2, per_class=6, size=24)
    settings = tmp_path / "toy.toml"
    settings.write_text("width = 4\nepochs = 2\nbatch_size = 4\nseed = 3\n")
    common = ("--config", settings, "--device", "cpu", "--workers", "0", "--data-path", "loader")

    shown = _sslkit(site, "pretrain", "toy", "--help")
    assert shown.returncode == 0, shown.stderr
    for text in ("--width", "Channels of the toy network (default 8).", "Toy", "--epochs", "--continue-from",
                 "sslkit pretrain toy photos/ --out runs/toy --width 4"):
        assert text in shown.stdout
    assert "--momentum" not in shown.stdout  # not_taken
    assert _sslkit(site, "pretrain", "--help").stdout.count("toy") >= 1

    straight = _sslkit(site, "pretrain", "toy", data, "--out", tmp_path / "straight", *common)
    assert straight.returncode == 0, straight.stderr
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert config["method"] == "toy" and config["toy"] == {"arch": "toy", "img_size": 16, "width": 4}
    assert config["train"]["epochs"] == 2 and config["train"]["optimizer"] == "adamw"

    # 12 images, batch 4: 3 steps an epoch; stopped after step index 3 (the second epoch's first), then resumed
    stopped = _sslkit(site, "pretrain", "toy", data, "--out", tmp_path / "resumed", *common, interrupt_at=3)
    assert stopped.returncode == 130, stopped.stderr
    resumed = _sslkit(site, "pretrain", "toy", data, "--out", tmp_path / "resumed", "--resume", "--device", "cpu")
    assert resumed.returncode == 0, resumed.stderr

    first = load_file(tmp_path / "straight" / "checkpoints" / "last.safetensors")
    second = load_file(tmp_path / "resumed" / "checkpoints" / "last.safetensors")
    assert sorted(first) == sorted(second)
    assert any(name.startswith("model.backbone.") for name in first)
    for name in first:
        assert torch.equal(first[name], second[name]), name

    bad = _sslkit(site, "pretrain", "toy", data, "--out", tmp_path / "bad", "--width", "0")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --width must be positive, not 0"
