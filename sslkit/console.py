"""Where sslkit talks: progress and messages on stderr, results on stdout."""

from rich.console import Console
from rich.markup import escape

stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)
_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def info(message: str) -> None:
    if not _quiet:
        stderr.print(escape(message), soft_wrap=True)


def warn(message: str) -> None:
    if not _quiet:
        stderr.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)
