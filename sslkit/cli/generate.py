"""Typer commands built from settings dataclasses (sslkit.settings): each field becomes an option with its
help, panel and flags, so the command line, the defaults and the checks cannot drift apart.

Typer reads a command's parameters from its signature; the generated function carries one
(``__signature__``) of ``Annotated[..., typer.Option(...)]`` parameters, Typer's public way to declare them.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Callable, Optional

import typer

from sslkit.settings import typed_fields, unwrapped

Parameter = inspect.Parameter


def argument(name: str, annotation: Any, help: str) -> Parameter:
    return Parameter(name, Parameter.KEYWORD_ONLY, annotation=Annotated[annotation, typer.Argument(help=help)])


def option(name: str, annotation: Any, *flags: str, default: Any = None, **info) -> Parameter:
    """An option that is not a setting (``--out``, ``--resume``, ``--quiet``, ...)."""
    return Parameter(name, Parameter.KEYWORD_ONLY, annotation=Annotated[annotation, typer.Option(*flags, **info)],
                     default=default)


def settings_options(cls, *, skip: tuple[str, ...] = (), help: dict[str, str] | None = None,
                     panel: dict[str, str] | None = None,
                     callback: dict[str, Callable] | None = None) -> list[Parameter]:
    """An option per field of the settings class ``cls`` that has help text (the others are settings for files
    and the API only). For this command: ``help`` and ``panel`` override a field's, ``callback`` checks a value
    while the command line is read (an output file), ``skip`` leaves fields out."""
    chosen = []
    for f, kind in typed_fields(cls):
        text = (help or {}).get(f.name, f.metadata.get("help", ""))
        if text and f.name not in skip:
            info = {"help": text.replace("{default}", str(f.default))}
            shown_in = (panel or {}).get(f.name, f.metadata.get("panel"))
            if shown_in:
                info["rich_help_panel"] = shown_in
            if callback and f.name in callback:
                info["callback"] = callback[f.name]
            chosen.append(_setting_option(f, kind, info))
    return chosen


def _setting_option(f, kind: Any, info: dict) -> Parameter:
    meta, flags = f.metadata, f.metadata.get("flags", ())
    if unwrapped(kind) is bool and len(flags) == 1 and "/" not in flags[0]:  # an on-switch: --force
        return option(f.name, bool, *flags, default=False, **info)
    read_as = meta.get("cli") or unwrapped(kind)
    if meta.get("cli_default"):
        return option(f.name, read_as, *flags, default=f.default, **info)
    return option(f.name, Optional[read_as], *flags, **info)


def given_settings(values: dict[str, Any], *classes) -> dict[str, Any]:
    """The settings among a command's ``values`` that were given (not None, switches on), each turned into the
    field's value by its ``parse``."""
    given = {}
    for cls in classes:
        for f, _ in typed_fields(cls):
            value = values.get(f.name)
            if value is None or value is False and len(f.metadata.get("flags", ())) == 1:
                continue
            parse = f.metadata.get("parse")
            given[f.name] = parse(f.name, value) if parse else value
    return given


def command(parameters: list[Parameter], run: Callable[..., Any], *, first: tuple = (), last: tuple = ()):
    """A function Typer can register, taking ``parameters`` and calling ``run(**values)``. Options are ordered
    by help panel: the panels in ``first``, then any others as they come, then those in ``last``, as --help
    shows them."""
    def generated(**values):
        return run(**values)

    generated.__signature__ = inspect.Signature(_by_panel(parameters, first, last))
    return generated


def _by_panel(parameters: list[Parameter], first: tuple, last: tuple) -> list[Parameter]:
    panels = [_panel(p) for p in parameters]
    others = [p for i, p in enumerate(panels) if p not in first and p not in last and p not in panels[:i]]
    order = [*first, *others, *last]
    return sorted(parameters, key=lambda p: order.index(_panel(p)))


def _panel(parameter: Parameter) -> str | None:
    info = parameter.annotation.__metadata__[0]
    return getattr(info, "rich_help_panel", None)
