"""Where sslkit talks: progress and messages on stderr, results on stdout."""

import os

from rich.console import Console
from rich.markup import escape

stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)
# under torchrun every process runs the command; the first one (RANK 0) speaks for all (the same test as
# engine.distributed.first_process, read here without importing torch)
_OTHER_PROCESS = os.environ.get("RANK", "0") != "0"
_quiet = _OTHER_PROCESS


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet or _OTHER_PROCESS


def is_quiet() -> bool:
    return _quiet


def info(message: str) -> None:
    if not _quiet:
        stderr.print(escape(message), soft_wrap=True)


def warn(message: str) -> None:
    if not _quiet:
        stderr.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


def track(items, total: int, label: str):
    """``items`` with a transient progress bar on stderr (none when quiet)."""
    from rich.progress import track as rich_track

    return rich_track(items, description=label, total=total, console=stderr, transient=True, disable=_quiet)
