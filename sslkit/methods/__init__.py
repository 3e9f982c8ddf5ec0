"""The pretraining methods, by name. A method is one file: its settings class, ``resolve`` (presets) and its
module; one ``MethodSpec`` registers it, here for the built-in ones, through ``register`` or the
``sslkit.methods`` entry-point group for a package of its own (docs/engine.md, "Adding a method")."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Callable, Mapping

from sslkit import console
from sslkit.methods import byol, dino, mae


@dataclass(frozen=True)
class MethodSpec:
    name: str  # sslkit pretrain NAME; recorded in every run and checkpoint
    config: type  # its settings: a frozen dataclass of sslkit.settings.setting fields
    build: Callable  # options -> nn.Module following sslkit.engine.method.Method
    resolve: Callable  # (TrainConfig, options, number of images) -> both, every None the trainer needs filled in
    help: str = ""  # sslkit pretrain NAME --help
    examples: tuple[str, ...] = ()
    shared_help: Mapping[str, str] = field(default_factory=dict)  # shared settings' help where its defaults differ
    not_taken: tuple[str, ...] = ()  # shared training settings it has no use for: not on its command line


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Make ``spec`` a method of ``sslkit.pretrain``, and of ``sslkit pretrain`` when registered before the
    command line runs (a package of its own uses the entry-point group instead)."""
    known = METHODS.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"a method named {spec.name!r} is registered already")
    METHODS[spec.name] = spec
    return spec


for spec in (
    MethodSpec("byol", byol.BYOLConfig, byol.BYOL, byol.resolve, byol.HELP, byol.EXAMPLES),
    MethodSpec("dino", dino.DINOConfig, dino.DINO, dino.resolve, dino.HELP, dino.EXAMPLES, dino.SHARED_HELP),
    MethodSpec("mae", mae.MAEConfig, mae.MAE, mae.resolve, mae.HELP, mae.EXAMPLES, mae.SHARED_HELP, mae.NOT_TAKEN),
):
    register(spec)


def _plugins() -> None:
    """Methods other packages declare under ``[project.entry-points."sslkit.methods"]``; one that fails to load
    is skipped with a warning, never taking the built-in methods with it."""
    for point in entry_points(group="sslkit.methods"):
        try:
            spec = point.load()
            if not isinstance(spec, MethodSpec):
                raise TypeError(f"{point.value} is a {type(spec).__name__}, not a MethodSpec")
            register(spec)
        except Exception as error:
            console.warn(f"method {point.name} from {point.value} not loaded: {type(error).__name__}: {error}")


_plugins()
