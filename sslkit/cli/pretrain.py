"""sslkit pretrain METHOD DATA --out RUN: self-supervised pretraining, one command per registered method, its
options generated from the method's settings, the shared training settings and --continue-from's."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sslkit.cli.common import DRY_RUN_HELP, QUIET_HELP, examples, handle_errors, show_plan
from sslkit.cli.generate import Parameter, argument, command, given_settings, option, settings_options
from sslkit.config import DATA, EVAL, HW, OPT, RUN, ContinueConfig, TrainConfig

app = typer.Typer(no_args_is_help=True, help="Pretrain an image encoder without labels.")

PARAMETERS = (
    argument("data", Path, "Folder of images (searched recursively; class sub-folders are ignored)."),
    option("out", Path, "--out", "-o", default=Parameter.empty,
           help="Run directory: config.json, metrics.jsonl, checkpoints/."),
    option("resume", bool, "--resume", default=False, help="Continue the run in --out from its last checkpoint.",
           rich_help_panel=RUN),
    option("dry_run", bool, "--dry-run", default=False, help=DRY_RUN_HELP, rich_help_panel=RUN),
    option("config", Optional[Path], help="Settings file (TOML or JSON, e.g. a run's config.json); options given "
                                          "here win.", rich_help_panel=RUN),
    option("quiet", bool, "--quiet", "-q", default=False, help=QUIET_HELP),
)


def add_methods() -> None:
    """A command for each registered method not yet added (sslkit.methods imports torch: only when needed)."""
    from sslkit.methods import METHODS

    added = {command.name for command in app.registered_commands}
    for spec in METHODS.values():
        if spec.name not in added:
            add_method(spec)


def add_method(spec) -> None:
    """``sslkit pretrain NAME``: the method's own options, then the shared ones it takes."""
    classes = (spec.config, TrainConfig, ContinueConfig)

    def run(data: Path, out: Path, resume: bool, dry_run: bool, config: Optional[Path], quiet: bool, **values):
        with handle_errors(quiet):
            from sslkit import api  # imports torch: only once a command runs

            result = api.pretrain(spec.name, data, out, config=config, resume=resume, dry_run=dry_run,
                                  **given_settings(values, *classes))
            if quiet:
                return
            if dry_run:
                show_plan(result)
            else:
                typer.echo(f"checkpoint: {result['checkpoint']}")

    options = [*settings_options(spec.config),
               *settings_options(TrainConfig, skip=spec.not_taken, help=dict(spec.shared_help)),
               *settings_options(ContinueConfig)]
    function = command([*PARAMETERS, *options], run, first=(None, RUN, OPT), last=(HW, DATA, EVAL))
    app.command(spec.name, help=spec.help, epilog=examples(*spec.examples))(function)
