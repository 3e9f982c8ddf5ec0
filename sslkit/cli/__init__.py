"""The sslkit command line: a thin shell over sslkit.api, one module per command group."""

import sys

import typer

from sslkit import __version__, console
from sslkit.cli import attention, copydetect, embed, export, finetune, info, pretrain, probe, reconstruct
from sslkit.cli.common import fail

_app = typer.Typer(
    name="sslkit",
    help="Self-supervised pretraining, evaluation and inspection of image encoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
_app.add_typer(pretrain.app, name="pretrain")
_app.add_typer(probe.app, name="probe")
_app.command(name="finetune", help=finetune.HELP, epilog=finetune.EPILOG)(finetune.finetune)
_app.command(name="attention", help=attention.HELP, epilog=attention.EPILOG)(attention.attention)
_app.command(name="reconstruct", help=reconstruct.HELP, epilog=reconstruct.EPILOG)(reconstruct.reconstruct)
_app.add_typer(copydetect.app, name="copydetect")
_app.command(name="export", help=export.HELP, epilog=export.EPILOG)(export.export)
_app.command(name="embed", help=embed.HELP, epilog=embed.EPILOG)(embed.embed)
_app.command(name="info", help=info.HELP, epilog=info.EPILOG)(info.info)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sslkit {__version__}")
        raise typer.Exit()


@_app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Self-supervised pretraining, evaluation and inspection of image encoders."""


def command_line(args: list[str]) -> list[str]:
    """What ``main`` hands Typer for the command line ``args``: ``dashed``, then ``default_commands``; the
    methods' commands are added for ``sslkit pretrain`` only."""
    if args[:1] == ["pretrain"]:
        pretrain.add_methods()
    return default_commands(dashed(args))


def __getattr__(name: str):
    """``sslkit.cli.app``: the whole command line, ``sslkit pretrain METHOD`` included. The methods import torch
    (seconds), so ``main`` adds them only when the command line is ``sslkit pretrain ...``, and every other
    command and ``--help`` starts in a fraction of a second."""
    if name == "app":
        pretrain.add_methods()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_commands(args: list[str]) -> list[str]:
    """``copydetect MODEL ...`` -> ``copydetect search MODEL ...``: a group with a default command (Typer has no
    such thing) followed by anything but one of its commands or --help gets the default command's name."""
    if len(args) > 1 and args[0] == "copydetect" and args[1] not in (*copydetect.COMMANDS, "--help", "-h"):
        return [args[0], copydetect.DEFAULT_COMMAND, *args[1:]]
    return args


def dashed(args: list[str]) -> list[str]:
    """``--out_dim 1024`` -> ``--out-dim 1024``: the official DINO / MAE scripts' spelling pastes unchanged."""
    return [_dashed(arg) for arg in args]


def _dashed(arg: str) -> str:
    if not arg.startswith("--"):
        return arg
    name, sep, value = arg.partition("=")
    return name.replace("_", "-") + sep + value


def main() -> None:
    console.route_warnings()
    # not standalone: a command line Typer rejects comes back here to be told in one line; typer.Exit comes
    # back as its exit code
    try:
        code = _app(args=command_line(sys.argv[1:]), prog_name="sslkit", standalone_mode=False)
    except typer.TyperException as error:  # Typer's (vendored) Click exceptions derive from it
        code = command_line_error(error)
    except typer.Abort:  # end of input at a prompt
        code = fail("aborted", 1).exit_code
    sys.exit(code if isinstance(code, int) else 0)


def command_line_error(error: typer.TyperException) -> int:
    """A missing argument, an unknown option, a value of the wrong type: Typer's message as one line like
    every other error, instead of its boxed usage text; returns the exit code."""
    if type(error).__name__ == "NoArgsIsHelpError":  # a bare ``sslkit probe``: Typer's rich help has printed
        if error.format_message():  # itself on stdout; without rich the help is the message
            typer.echo(error.format_message())
        return error.exit_code
    message = error.format_message()
    context = getattr(error, "ctx", None)
    if context is not None:
        message += f" (see {context.command_path} --help)"
    return fail(message, error.exit_code).exit_code
