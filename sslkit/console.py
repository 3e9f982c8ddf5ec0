"""Where sslkit talks: progress and messages on stderr, results on stdout."""

import os
import re
import warnings

from rich.console import Console
from rich.text import Text

# emoji=False: a file named ":fire:.png" prints as written
stderr = Console(stderr=True, highlight=False, emoji=False)
stdout = Console(highlight=False, emoji=False)
# under torchrun every process runs the command; the first one (RANK 0) speaks for all (the same test as
# engine.distributed.first_process, read here without importing torch)
_OTHER_PROCESS = os.environ.get("RANK", "0") != "0"
_quiet = _OTHER_PROCESS


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet or _OTHER_PROCESS


def is_quiet() -> bool:
    return _quiet


# messages are Text, not markup: a file name like "[red]x.png" prints as written
def info(message: str) -> None:
    if not _quiet:
        stderr.print(Text(printable(message)), soft_wrap=True)


def warn(message: str) -> None:
    """sslkit's own warnings (data skipped, a setting changed) print even with --quiet, which hides progress
    and information only; torchrun's other processes leave them to the first."""
    if not _OTHER_PROCESS:
        stderr.print(Text.assemble(("warning:", "yellow"), " ", printable(message)), soft_wrap=True)


# C0 controls (newline, tab, ESC), DEL, C1 controls, the Unicode line and paragraph separators, and lone
# surrogates: what a file name can hold that would break a message over lines or drive the terminal
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` as one line that shows as written: control characters as escapes (a newline as ``\\n``, ESC
    as ``\\x1b``), and the bytes of a file name that are not UTF-8 (Python's surrogate escapes) as ``\\xff``."""
    return _UNPRINTABLE.sub(_escaped, text)


def _escaped(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def route_warnings(quiet: bool | None = None) -> None:
    """Python warnings (torch's, timm's, Pillow's) as one ``warning: ...`` line each, each distinct one once
    per process, silenced by --quiet. The command line calls this first; a data-loading worker started fresh
    (forkserver, spawn) calls it too, with the main process's ``quiet`` (a forked one inherits both)."""
    if quiet is not None:
        set_quiet(quiet)
    warnings.showwarning = _show_warning
    # Pillow's advice to whoever converts a palette image with per-entry transparency to RGB: "convert to RGBA
    # instead". sslkit reads every image as RGB, dropping alpha as it does for RGBA files, and converting
    # through RGBA gives the same pixels: nothing the user can or should do.
    warnings.filterwarnings("ignore", message="Palette images with Transparency expressed in bytes",
                            category=UserWarning)


_SHOWN: set[tuple[type, str]] = set()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    lines = [text.strip() for text in str(message).splitlines() if text.strip()]
    text = lines[0] if lines else category.__name__
    if (category, text) not in _SHOWN and not _quiet:  # the libraries' own warnings: silenced by --quiet
        _SHOWN.add((category, text))
        warn(text)


def track(items, total: int, label: str):
    """``items`` with a transient progress bar on stderr (none when quiet)."""
    from rich.progress import track as rich_track

    return rich_track(items, description=label, total=total, console=stderr, transient=True, disable=_quiet)
