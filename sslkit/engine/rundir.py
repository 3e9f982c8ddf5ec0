"""Run directories: a new run never writes over another by accident, and old periodic checkpoints go only
once a newer one is whole."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sslkit.engine import checkpoint as ckpt, distributed
from sslkit.errors import UsageError

RUN_FILES = ("checkpoints", "metrics.jsonl", "config.json", "curves.png")  # what a run writes


def check_new_run(out: Path, force: bool) -> None:
    """Refuse to start a run in a folder that already holds files, unless ``force``."""
    out = Path(out)
    if not distributed.first_process():  # under torchrun the first process checks (the others may see its files)
        return
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if force or not out.is_dir() or not any(out.iterdir()):
        return
    holds = "a run" if any((out / name).exists() for name in RUN_FILES) else "other files"
    raise UsageError(f"{out} already holds {holds}; continue a run with --resume, start over in it with --force, "
                     "or choose another --out")


def clear_previous_run(out: Path) -> None:
    """``--force``: remove what an earlier run wrote in ``out`` (other files stay), just before the new one starts."""
    for name in RUN_FILES:
        path = Path(out) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


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
    for old in sorted(last.parent.glob("epoch-*.safetensors"))[:-keep]:
        old.unlink()
