"""A setting declared once: a frozen dataclass field carries its default, type, help text, help panel and checks.

    @dataclass(frozen=True)
    class DINOSettings(Settings):
        teacher_temp: float | None = setting(None, "Teacher temperature after warm-up ...", panel="DINO",
                                             check=positive)

The command line is generated from these fields (sslkit.cli.generate), files are read into them
(sslkit.config), and every instance checks itself when it is made: a bad value from the command line, a file
or the Python API gets the same one-line error.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable

from sslkit.errors import UsageError

Check = Callable[[str, Any], None]  # (field name, value) -> None, or raises UsageError


def setting(default: Any = None, help: str = "", *, panel: str | None = None, check: Check | tuple = (),
            flags: tuple[str, ...] = (), cli: Any = None, parse: Callable | None = None,
            factory: Callable | None = None, cli_default: bool = False) -> Any:
    """A dataclass field with what the command line shows of it.

    ``check``: one check or a tuple of them, run on every value but None. ``flags``: the option's names when
    they are not ``--field-name`` (e.g. ``("--out", "-o")``, ``("--compile/--no-compile",)``); a single
    ``--name`` for a bool makes an on-switch that is never written as false. ``cli``: the type the command line
    reads when it is not the field's (``Path`` for a folder kept as text, ``str`` for ``true`` / ``false``),
    and ``parse`` turns what it read into the field's value. ``cli_default``: the option shows the default
    (commands without presets or settings files); otherwise it is None until given, so that a file or a preset
    can fill it. ``help=""`` keeps a field off the command line.
    """
    checks = check if isinstance(check, tuple) else (check,)
    metadata = {"help": help, "panel": panel, "checks": checks, "flags": flags, "cli": cli, "parse": parse,
                "cli_default": cli_default}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    """Base of every settings class: on construction each field is checked against its type (numbers finite,
    lists of numbers made tuples where the field is a tuple) and its checks, then ``check()`` relates fields."""

    def __post_init__(self) -> None:
        for f, kind in typed_fields(type(self)):
            value = getattr(self, f.name)
            if isinstance(value, list) and typing.get_origin(unwrapped(kind)) is tuple:
                value = tuple(value)
                object.__setattr__(self, f.name, value)
            check_type(f.name, kind, value)
            if value is not None:
                for check in f.metadata.get("checks", ()):
                    check(f.name, value)
        self.check()

    def check(self) -> None:
        """Checks across fields (e.g. both of a pair given); a subclass overrides it."""


def typed_fields(cls) -> list[tuple[dataclasses.Field, Any]]:
    """Each field of the dataclass ``cls`` with its evaluated type annotation."""
    hints = _hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def option_name(name: str) -> str:
    return f"--{name.replace('_', '-')}"


# ---------------------------------------------------------------- types


def check_type(name: str, kind: Any, value: Any, source: str = "") -> None:
    """``value`` fits the type ``kind`` (``int``, ``float | None``, ``tuple[float, float]``, ``list[int]``, ...)."""
    if _fits(kind, value):
        return
    kinds = [k for k in _alternatives(kind) if k is not type(None)]
    expected = " or ".join(_KIND_NAMES.get(typing.get_origin(k) or k, str(k)) for k in kinds)
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    where = f"{name} = {shown} in {source}" if source else f"{option_name(name)} {shown}"
    raise UsageError(f"{where} is not {expected}")


_KIND_NAMES = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string",
               tuple: "a list of numbers", list: "a list"}


def _alternatives(kind: Any) -> tuple:
    return typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, _UnionType) else (kind,)


_UnionType = type(int | None)


def unwrapped(kind: Any) -> Any:
    """``X | None`` -> ``X``."""
    kinds = [k for k in _alternatives(kind) if k is not type(None)]
    return kinds[0] if len(kinds) == 1 else kind


def _fits(kind: Any, value: Any) -> bool:
    if typing.get_origin(kind) in (typing.Union, _UnionType):
        return any(_fits(k, value) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is str:
        return isinstance(value, str)
    origin = typing.get_origin(kind)
    if origin in (tuple, list):
        inner = typing.get_args(kind)
        if not isinstance(value, (list, tuple)) or (origin is tuple and len(value) != len(inner)):
            return False
        return all(_fits(inner[0], item) for item in value)
    return True  # nested settings and Any: checked where they are built


# ---------------------------------------------------------------- checks


def positive(name: str, value) -> None:
    if value <= 0:
        raise UsageError(f"{option_name(name)} must be positive, not {value}")


def at_least_zero(name: str, value) -> None:
    if value < 0:
        raise UsageError(f"{option_name(name)} must be 0 or more, not {value}")


def each(check: Check) -> Check:
    """``check`` on every item of a list setting."""
    def checked(name: str, values) -> None:
        for value in values:
            check(name, value)
    return checked


def one_of(*allowed: str) -> Check:
    def checked(name: str, value: str) -> None:
        choice(name, value, allowed)
    return checked


def choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise UsageError(f"{option_name(name)} must be one of {', '.join(allowed)}, not '{value}'")
    return value


def at_most_one(name: str, value) -> None:
    if value > 1:
        raise UsageError(f"{option_name(name)} must be at most 1, not {value}")


def between_0_and_1(name: str, value) -> None:
    if not 0 <= value <= 1:
        raise UsageError(f"{option_name(name)} must lie between 0 and 1, not {value}")


def below_1(name: str, value) -> None:
    """A momentum or a beta: in [0, 1)."""
    if not 0 <= value < 1:
        raise UsageError(f"{option_name(name)} must lie in [0, 1), not {value}")


def share(name: str, value) -> None:
    """A share of a whole: in (0, 1]."""
    if not 0 < value <= 1:
        raise UsageError(f"{option_name(name)} must lie in (0, 1], not {value}")


def scale_range(name: str, value) -> None:
    """An area range of random resized crops: two numbers with 0 < MIN <= MAX <= 1."""
    low, high = value
    if not 0 < low <= high <= 1:
        raise UsageError(f"{option_name(name)} must be two numbers with 0 < MIN <= MAX <= 1")


MIN_IMG_SIZE, MAX_IMG_SIZE = 16, 8192  # pixels: the smallest input a patch-16 ViT or a ResNet takes; memory


def pixels(name: str, value: int) -> None:
    """An image side in pixels."""
    positive(name, value)
    if not MIN_IMG_SIZE <= value <= MAX_IMG_SIZE:
        raise UsageError(f"{option_name(name)} must lie in {MIN_IMG_SIZE}..{MAX_IMG_SIZE} pixels, not {value}")


def seed_range(name: str, value: int) -> None:
    if not 0 <= value < 2**32:  # numpy's seeds (timm's mixup, RandAugment) are 32-bit
        raise UsageError(f"{option_name(name)} must lie in 0..{2**32 - 1}, not {value}")


def as_text(name: str, value) -> str:
    """A path read from the command line, kept as text in the settings."""
    return str(value)


def parse_bool(name: str, value: str) -> bool:
    """A boolean option that takes a value, as DINO's scripts spell them (``--norm_last_layer false``)."""
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise UsageError(f"{option_name(name)} takes true or false, not '{value}'")
