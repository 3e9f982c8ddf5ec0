"""Run directories: a run writes and deletes only the files it can tell are a run's, a folder is written by
one run at a time, and an earlier run replaced with --force comes back if the new one fails before its first
checkpoint."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from sslkit import __version__, console, files
from sslkit.engine import checkpoint as ckpt, distributed
from sslkit.errors import UsageError
from sslkit.visualize.schedules import PLAN_NAME, is_plan_picture

MARKER = ".sslkit-run.json"  # written first into every run directory: what makes a folder recognisably a run
LOCK = ".sslkit-lock.json"
ASIDE = ".sslkit-previous-run"  # --force: the earlier run, kept here until the new one has a checkpoint
TOP_FILES = ("config.json", "metrics.jsonl", "curves.png")
CHECKPOINT_NAME = re.compile(r"(last|best|epoch-\d{4,})\.safetensors(\.tmp)?")


def check_new_run(out: Path, force: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse to start a run in a folder that already holds files, unless ``force``; even then, refuse when the
    run would overwrite files sslkit cannot tell are a run's. ``inputs``: folders the run reads, which must not
    hold the run (its files would become inputs)."""
    out = Path(out)
    if not distributed.first_process():  # under torchrun the first process checks (the others may see its files)
        return
    files.check_output_folder(out, "--out")
    check_free(out)
    for folder in inputs:
        if _within(out, folder):
            raise UsageError(f"--out {out} lies inside {folder}, which the run reads; choose a folder outside it")
    # a lock alone was left by a dead run; a dry run's plan alone is this run's picture of its schedules
    if not out.is_dir() or not any(p.name != LOCK and not is_plan(p) for p in out.iterdir()):
        return
    ours = is_run(out)
    if not force:
        holds = "a run" if ours else "other files"
        raise UsageError(f"{out} already holds {holds}; continue a run with --resume, start over in it with --force, "
                         "or choose another --out")
    if not ours:
        clashes = [str(path.relative_to(out)) for path in run_files(out)]  # what --force would set aside
        if clashes:
            raise UsageError(f"{out} holds {', '.join(clashes)}, which sslkit cannot tell are a run's (no {MARKER}); "
                             "--force never overwrites them: move them or choose another --out")


def decided(out: Path) -> dict:
    """What a run recorded it decided when it started (config.json's ``decided``: data path, precision)."""
    try:
        record = json.loads((out / "config.json").read_text(encoding="utf-8")).get("decided")
    except (OSError, ValueError, AttributeError):
        return {}
    return record if isinstance(record, dict) else {}


def is_run(out: Path) -> bool:
    """Whether ``out`` holds an sslkit run: its marker, or (a run from before the marker) an sslkit checkpoint."""
    if (out / MARKER).is_file():
        return True
    last = out / "checkpoints" / "last.safetensors"
    try:
        return last.is_file() and ckpt.raw_metadata(last).get("format") == ckpt.FORMAT
    except UsageError:
        return False


def mark(out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).is_file():
        files.write_json(out / MARKER, {"sslkit": __version__, "command": command})


def is_plan(path: Path) -> bool:
    """Whether ``path`` is the schedules.png a dry run (--dry-run) drew: sslkit's, whichever command wrote it."""
    return path.name == PLAN_NAME and path.is_file() and is_plan_picture(path)


def run_files(out: Path) -> list[Path]:
    """The files a run wrote in ``out``: never a file of the user's, whatever its name."""
    found = [out / name for name in (*TOP_FILES, MARKER) if (out / name).is_file()]
    found += [out / PLAN_NAME] if is_plan(out / PLAN_NAME) else []
    checkpoints = out / "checkpoints"
    if checkpoints.is_dir():
        found += sorted(p for p in checkpoints.iterdir() if p.is_file() and CHECKPOINT_NAME.fullmatch(p.name))
    board = out / "tensorboard"  # --logger tensorboard
    if board.is_dir():
        found += sorted(p for p in board.iterdir() if p.is_file() and p.name.startswith("events.out.tfevents."))
    return found


def set_aside(out: Path) -> Path | None:
    """``--force``: move the earlier run's files into ``out/.sslkit-previous-run`` (a rename each, no copy).
    :func:`discard` deletes them once the new run has written a checkpoint; :func:`restore` puts them back."""
    aside = out / ASIDE
    if aside.exists():  # left by a --force run that died before its first checkpoint: that run was replaced
        shutil.rmtree(aside)
    moved = run_files(out)
    if not moved:
        return None
    for path in moved:
        target = aside / path.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    return aside


def discard(aside: Path) -> None:
    shutil.rmtree(aside, ignore_errors=True)


def restore(aside: Path, out: Path) -> None:
    """The earlier run back in place of what the failed new one wrote."""
    for path in run_files(out):
        path.unlink()
    for path in sorted(p for p in aside.rglob("*") if p.is_file()):
        target = out / path.relative_to(aside)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    shutil.rmtree(aside, ignore_errors=True)
    console.info(f"the earlier run in {out} is back in place")


@contextmanager
def locked(out: Path):
    """Hold ``out/.sslkit-lock.json`` (process id, host, start time) while a run writes to ``out``. A lock left
    by a process of this host that no longer exists is taken over, with a notice."""
    path = Path(out) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            check_free(out)
            console.warn(f"taking over the lock of {out}, left by process {_read(path).get('pid', '?')}, "
                         "which has ended")
            path.unlink(missing_ok=True)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(me) + "\n")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def check_free(out: Path) -> None:
    """Refuse a folder another live run is writing to (its lock names a process of another host, or one of
    this host that still runs)."""
    path = Path(out) / LOCK
    holder = _read(path)
    if holder is None:
        return
    pid, host = holder.get("pid"), holder.get("host")
    if isinstance(pid, int) and host == socket.gethostname() and not files.process_alive(pid):
        return
    if not holder and time.time() - _mtime(path) > 5:  # cut short while being written, long ago: its run died
        return
    raise UsageError(f"{out} is in use by another run (process {pid or '?'} on {host or '?'}, since "
                     f"{holder.get('started', 'just now')}); wait for it, or delete {path} if no run is using it")


def _read(path: Path) -> dict | None:
    """A lock's content; {} for a lock being written or cut short; None for no lock."""
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _within(path: Path, folder: Path) -> bool:
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def keep_snapshot(last: Path, epoch: int, keep: int) -> None:
    """``--keep K`` (K > 1): the checkpoint just written stays as ``epoch-NNNN.safetensors`` beside ``last``
    (a hard link where the file system has them: no second copy), and only the K newest such files are kept.
    Older ones are deleted only after the new one reads back whole."""
    if keep < 2:
        return
    snapshot = last.with_name(f"epoch-{epoch:04d}.safetensors")
    tmp = snapshot.with_name(snapshot.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(last, tmp)
    except OSError:  # no hard links here (some network and FAT file systems)
        shutil.copyfile(last, tmp)
    os.replace(tmp, snapshot)
    ckpt.read_metadata(snapshot)  # raises rather than prune when the newest is not readable
    snapshots = [p for p in last.parent.iterdir() if re.fullmatch(r"epoch-\d{4,}\.safetensors", p.name)]
    for old in sorted(snapshots, key=lambda p: int(p.name[6:-12]))[:-keep]:
        old.unlink()
