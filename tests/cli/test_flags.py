"""Every command's flags, defaults, types and help panels, against the list written before the settings were
declared on their dataclasses (tests/cli/flags.json): users' Makefiles and scripts must not break.

Regenerate the list only for a deliberate change of the command line:
    python -m tests.cli.test_flags > tests/cli/flags.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from sslkit.cli import app

LIST = Path(__file__).with_name("flags.json")
DEFAULT_PANEL = "Options"


def _param(param, context: typer.Context) -> dict:
    default = param.default
    if callable(default):
        default = "<callable>"
    elif isinstance(default, (Path, tuple)):
        default = str(default) if isinstance(default, Path) else list(default)
    return {
        "kind": param.param_type_name,
        "flags": sorted(param.opts),
        "negative": sorted(getattr(param, "secondary_opts", []) or []),
        "default": default,
        "type": param.display_type(context),
        "nargs": param.nargs,
        "multiple": param.multiple,
        "hidden": param.hidden,
        "checked_when_read": param.callback is not None,
        "required": param.required,
        "is_flag": bool(getattr(param, "is_flag", False)),
        "panel": (getattr(param, "rich_help_panel", None)
                  or (None if param.param_type_name == "argument" else DEFAULT_PANEL)),
        "help": getattr(param, "help", None),
    }


def _panels(command) -> list[list]:
    """Each help panel's options in the order --help shows them: [[panel, [name, ...]], ...]."""
    panels: dict[str, list[str]] = {}
    for param in command.params:
        if param.param_type_name == "option":
            panels.setdefault(getattr(param, "rich_help_panel", None) or DEFAULT_PANEL, []).append(param.name)
    return [[panel, names] for panel, names in panels.items()]


def flag_list() -> dict[str, dict]:
    """``{"sslkit pretrain byol": {"help": ..., "epilog": ..., "params": {name: {...}}, "panels": [...]}}``."""
    commands: dict[str, dict] = {}

    def visit(command, path: str) -> None:
        context = typer.Context(command)
        commands[path] = {
            "help": command.help,
            "epilog": command.epilog,
            "params": {param.name: _param(param, context) for param in command.params},
            "panels": _panels(command),
        }
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                visit(sub, f"{path} {name}")

    visit(typer.main.get_command(app), "sslkit")
    return commands


def test_every_flag_default_and_panel_is_unchanged():
    """Help text, flags, defaults, types and panels, and the order of the panels; within a panel the options may
    come in another order (the generated commands list a class's fields together)."""
    expected, actual = json.loads(LIST.read_text()), flag_list()
    assert sorted(actual) == sorted(expected)
    for path, was in expected.items():
        now = actual[path]
        assert now["help"] == was["help"], path
        assert now["epilog"] == was["epilog"], path
        assert sorted(now["params"]) == sorted(was["params"]), path
        for name, param in was["params"].items():
            assert now["params"][name] == param, f"{path} {name}"
        assert [p for p, _ in now["panels"]] == [p for p, _ in was["panels"]], f"{path}: the panels' order"
        for (panel, names), (_, now_names) in zip(was["panels"], now["panels"]):
            assert sorted(now_names) == sorted(names), f"{path}: the options of panel {panel}"


def test_the_list_covers_every_command():
    listed = json.loads(LIST.read_text())
    for path in ("sslkit pretrain byol", "sslkit pretrain dino", "sslkit pretrain mae", "sslkit probe knn",
                 "sslkit probe linear", "sslkit finetune", "sslkit copydetect search",
                 "sslkit copydetect make-benchmark", "sslkit attention", "sslkit reconstruct", "sslkit export",
                 "sslkit embed", "sslkit info"):
        assert listed[path]["params"], path
    assert listed["sslkit pretrain dino"]["params"]["teacher_temp"]["panel"] == "DINO"
    assert listed["sslkit pretrain byol"]["params"]["img_size"]["flags"] == ["--img-size"]


if __name__ == "__main__":
    json.dump(flag_list(), sys.stdout, indent=1, sort_keys=True)
    print()
