"""The sslkit command line: a thin shell over sslkit.api, one module per command group."""

import sys

import typer

from sslkit import __version__
from sslkit.cli import attention, copydetect, export, finetune, info, pretrain, probe, reconstruct

app = typer.Typer(
    name="sslkit",
    help="Self-supervised pretraining, evaluation and inspection of image encoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.add_typer(pretrain.app, name="pretrain")
app.add_typer(probe.app, name="probe")
app.command(name="finetune", help=finetune.HELP, epilog=finetune.EPILOG)(finetune.finetune)
app.command(name="attention", help=attention.HELP, epilog=attention.EPILOG)(attention.attention)
app.command(name="reconstruct", help=reconstruct.HELP, epilog=reconstruct.EPILOG)(reconstruct.reconstruct)
app.add_typer(copydetect.app, name="copydetect")
app.command(name="export", help=export.HELP, epilog=export.EPILOG)(export.export)
app.command(name="info", help=info.HELP, epilog=info.EPILOG)(info.info)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sslkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Self-supervised pretraining, evaluation and inspection of image encoders."""


def dashed(args: list[str]) -> list[str]:
    """``--out_dim 1024`` -> ``--out-dim 1024``: the official DINO / MAE scripts' spelling pastes unchanged."""
    return [_dashed(arg) for arg in args]


def _dashed(arg: str) -> str:
    if not arg.startswith("--"):
        return arg
    name, sep, value = arg.partition("=")
    return name.replace("_", "-") + sep + value


def main() -> None:
    app(args=dashed(sys.argv[1:]), prog_name="sslkit")
