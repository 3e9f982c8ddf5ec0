"""The pretraining methods, by name: their settings class, preset resolution and module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sslkit.config import BYOLConfig, DINOConfig, MAEConfig
from sslkit.methods import byol, dino, mae


@dataclass(frozen=True)
class MethodSpec:
    config: type
    resolve: Callable  # (TrainConfig, options, number of images) -> (TrainConfig, options), presets filled in
    build: Callable  # options -> nn.Module following sslkit.engine.method.Method


METHODS = {
    "byol": MethodSpec(BYOLConfig, byol.resolve, byol.BYOL),
    "dino": MethodSpec(DINOConfig, dino.resolve, dino.DINO),
    "mae": MethodSpec(MAEConfig, mae.resolve, mae.MAE),
}
