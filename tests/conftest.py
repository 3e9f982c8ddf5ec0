"""Shared fixtures: tiny generated image folders and tiny BYOL settings."""

from __future__ import annotations

import signal
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

# Property tests draw the same examples on every machine and every run: CI must not pass or fail by the draw.
settings.register_profile("sslkit", derandomize=True)
settings.load_profile("sslkit")

# A BYOL small enough to train a few steps in about a second on one CPU core.
TINY_BYOL = dict(
    arch="test_resnet", img_size=32, projector_hidden_dim=64, projector_dim=32, predictor_hidden_dim=64,
    batch_size=8, workers=0, device="cpu", precision="fp32",
)


def make_folder(root, classes: int = 2, per_class: int = 12, size: int = 40, seed: int = 0, labelled: bool = True):
    """Images whose class is obvious: class c is dominated by colour channel c, with noise and a random square."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c}" if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, size=(size, size, 3))
            pixels[..., c % 3] += 160
            x, y = rng.integers(0, size - 10, size=2)
            pixels[y : y + 10, x : x + 10] = rng.integers(0, 255, size=3)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"c{c}_{i:03d}.png")
    return root


@pytest.fixture(autouse=True)
def no_native_bf16(monkeypatch):
    """Every test sees a CPU without native bf16, so that what --precision auto decides does not depend on the
    CPU CI draws (subprocess tests pass --precision fp32)."""
    monkeypatch.setattr("sslkit.engine.device.native_cpu_bf16", lambda: None)


@pytest.fixture(autouse=True)
def feature_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty feature cache, never the user's ~/.cache."""
    path = tmp_path_factory.mktemp("feature-cache")
    monkeypatch.setenv("SSLKIT_CACHE_DIR", str(path))
    return path


@pytest.fixture(autouse=True)
def store_dir(tmp_path_factory, monkeypatch):
    """Every test gets its own empty folder of decoded stores, never the user's ~/.cache."""
    path = tmp_path_factory.mktemp("stores")
    monkeypatch.setenv("SSLKIT_STORE_DIR", str(path))
    return path


@pytest.fixture
def image_folder(tmp_path):
    return make_folder(tmp_path / "images")


@contextmanager
def interrupt_at(method_class, step: int):
    """Inside the block, send ourselves SIGINT right after optimizer step ``step`` of ``method_class``, as a
    Ctrl-C would. Only this patch is undone at the end: the fixtures' patches stay."""
    original = getattr(method_class, "after_optimizer_step", None)  # an optional hook

    def hooked(self, progress):
        if progress.step == step:
            signal.raise_signal(signal.SIGINT)
        return original(self, progress) if original else {}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(method_class, "after_optimizer_step", hooked, raising=False)
        yield
