"""Writing files so that a crash, a full disk or Ctrl-C never leaves a half file under the real name, and
checking before any work that an output can be written at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from sslkit.errors import UsageError, WriteFailed


def write_atomic(path: str | Path, write: Callable[[Path], None], tmp_suffix: str = ".tmp") -> None:
    """``write(tmp)`` fills a temporary file beside ``path``; it is synced and renamed to ``path``. Any OSError
    (disk full, quota, permissions, a vanished mount) becomes one WriteFailed line with the previous file kept.
    ``tmp_suffix``: make it unique (the process id) where several processes may write the same file."""
    path = Path(path)
    tmp = path.with_name(path.name + tmp_suffix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        _remove_quietly(tmp)
        raise write_failed(path, error) from None
    except BaseException:  # Ctrl-C, or the writer's own error: no temporary file stays behind
        _remove_quietly(tmp)
        raise
    fsync_dir(path.parent)


def write_failed(path: Path, error: OSError) -> WriteFailed:
    kept = "the previous file is intact" if path.exists() else "nothing was written"
    return WriteFailed(f"cannot write {path} ({error.strerror or error}); {kept}")


def write_text(path: str | Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8", errors="surrogateescape"))


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (where the platform can open folders)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_output_file(path: str | Path, option: str) -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, a broken link, a place
    where no file can be created."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file name")
    if path.is_symlink() and not path.exists():
        raise UsageError(f"{option} {path} is a broken symbolic link")
    _check_creatable(path.parent, f"{option} {path}")


def check_output_folder(path: str | Path, option: str) -> None:
    """Refuse, before any work, an output folder that is a file or lies where nothing can be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file, not a folder")
    if path.is_symlink() and not path.exists():
        raise UsageError(f"{option} {path} is a broken symbolic link")
    _check_creatable(path if path.is_dir() else path.parent, f"{option} {path}")


def _check_creatable(folder: Path, what: str) -> None:
    """A file can be made in ``folder`` (or, where it does not exist yet, in its nearest existing parent):
    tried for real, since permission bits do not tell a read-only file system or what root may do."""
    existing = folder
    while not existing.exists():
        if existing.is_symlink():
            raise UsageError(f"{what}: {existing} is a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{what}: {existing} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".sslkit-write-check-", dir=existing)
    except OSError as error:
        raise UsageError(f"{what}: cannot write in {existing} ({error.strerror or error})") from None
    os.close(handle)
    _remove_quietly(Path(probe))


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
