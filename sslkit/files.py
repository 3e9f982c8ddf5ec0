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


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs: what tells a lock or a partial folder it left behind
    from one in use."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        pass
    return True


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


MANIFEST = ".sslkit-output.json"


class OutputFolder:
    """A folder a command fills with files (attention maps, reconstructions): new, empty, or holding an earlier
    output of the same command, which its manifest ``.sslkit-output.json`` lists; with ``force`` other files
    may be there too. Whatever the case, :meth:`claim` refuses, before any work, to overwrite an input or a
    file sslkit did not write there."""

    def __init__(self, root: str | Path, command: str, force: bool = False):
        self.root, self.command = Path(root), command
        check_output_folder(self.root, "--out")
        self.ours = self._listed()
        others = [p for p in self._files() if p not in self.ours and p != MANIFEST]
        if others and not force:
            raise UsageError(f"--out {self.root} holds files sslkit did not write there ({_few(others)}); choose a "
                             "new or empty folder, or add --force to write beside them (they are never overwritten)")

    def claim(self, names: list[str], inputs: list[Path]) -> None:
        """Refuse, before anything is written, when writing ``names`` (paths relative to the folder) would
        replace an input or a file sslkit did not write; then record them in the manifest."""
        inputs_at = {os.path.realpath(p): p for p in inputs}
        for name in names:
            target = self.root / name
            if os.path.realpath(target) in inputs_at:
                raise UsageError(f"--out {self.root}: writing {name} would replace the input "
                                 f"{inputs_at[os.path.realpath(target)]}; choose another --out")
            if os.path.lexists(target) and name not in self.ours:
                raise UsageError(f"--out {self.root}: {name} exists and sslkit did not write it; it is never "
                                 "overwritten: choose another --out")
            for parent in Path(name).parents:
                if parent != Path(".") and (self.root / parent).exists() and not (self.root / parent).is_dir():
                    raise UsageError(f"--out {self.root}: {parent} is a file, where a folder of outputs goes")
        self.ours |= set(names)
        self.recorded = False

    def write(self, name: str, write: Callable[[Path], None]) -> Path:
        """Write the claimed file ``name`` atomically (``write(tmp)`` fills it); the manifest lists it first."""
        if not self.recorded:
            write_json(self.root / MANIFEST, {"command": self.command, "files": sorted(self.ours)})
            self.recorded = True
        target = self.root / name
        write_atomic(target, write)
        return target

    def write_json(self, name: str, data) -> Path:
        """Write the claimed file ``name`` as indented JSON."""
        return self.write(name, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))

    def _listed(self) -> set[str]:
        try:
            manifest = json.loads((self.root / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return set()
        if not isinstance(manifest, dict) or manifest.get("command") != self.command:
            return set()
        return {name for name in manifest.get("files", []) if isinstance(name, str)}

    def _files(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(str(Path(top, name).relative_to(self.root)) for top, _, names in os.walk(self.root)
                      for name in names)


def unique_names(files: list[Path]) -> list[str]:
    """An output name per image: its file stem, numbered when stems repeat."""
    names, seen = [], {}
    for path in files:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        names.append(path.stem if count == 0 else f"{path.stem}-{count + 1}")
    return names


def _few(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
