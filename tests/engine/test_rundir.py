"""Run directories: --force replaces an earlier run only once the new one has a checkpoint, a folder is
written by one run at a time, and a full disk or a torn metrics line never makes a run unresumable."""

import errno
import hashlib
import json
import subprocess
import sys

import pytest
import torch

import sslkit
from sslkit.engine import checkpoint as ckpt, progress, rundir
from sslkit.errors import Interrupted, UsageError, WriteFailed
from sslkit.methods.byol import BYOL
from tests.conftest import TINY_BYOL, interrupt_at


def digests(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # every line whole


def test_a_force_run_that_fails_before_its_first_checkpoint_puts_the_earlier_run_back(image_folder, tmp_path,
                                                                                     monkeypatch):
    run = tmp_path / "run"
    sslkit.pretrain("byol", image_folder, run, **dict(TINY_BYOL, epochs=1))
    (run / "checkpoints" / "mine.pth").write_bytes(b"the user's")
    before = digests(run)

    def broken(self, batch):
        raise RuntimeError("the new run breaks")

    monkeypatch.setattr(BYOL, "training_step", broken)
    with pytest.raises(RuntimeError, match="the new run breaks"):
        sslkit.pretrain("byol", image_folder, run, **dict(TINY_BYOL, epochs=2, lr=0.5), force=True)
    assert digests(run) == before
    assert not (run / rundir.ASIDE).exists() and not (run / rundir.LOCK).exists()


def test_a_force_run_drops_the_earlier_run_at_its_first_checkpoint(image_folder, tmp_path):
    run = tmp_path / "run"
    sslkit.pretrain("byol", image_folder, run, **dict(TINY_BYOL, epochs=2, log_every=1))
    with interrupt_at(BYOL, step=1), pytest.raises(Interrupted):
        sslkit.pretrain("byol", image_folder, run, **dict(TINY_BYOL, epochs=3, log_every=1), force=True)
    assert ckpt.read_metadata(run / "checkpoints" / "last.safetensors")["step"] == "2"
    assert max(r["step"] for r in records(run)) == 2  # the earlier run's 6 steps are gone, not mixed in
    assert not (run / rundir.ASIDE).exists()


def test_a_run_folder_in_use_is_refused_and_a_dead_runs_lock_is_taken_over(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    with rundir.locked(run):  # another run, alive, writes here
        with pytest.raises(UsageError, match="in use by another run \\(process \\d+ on "):
            sslkit.pretrain("byol", image_folder, run, **dict(TINY_BYOL, epochs=1))
    assert not (run / rundir.LOCK).exists()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = {"pid": int(ended.stdout), "host": __import__("socket").gethostname(), "started": "earlier"}
    (run / rundir.LOCK).write_text(json.dumps(lock))
    sslkit.pretrain("byol", image_folder, run, **dict(TINY_BYOL, epochs=1))
    assert f"taking over the lock of {run}, left by process {lock['pid']}, which has ended" in capsys.readouterr().err
    assert (run / "checkpoints" / "last.safetensors").is_file() and not (run / rundir.LOCK).exists()


def test_a_full_disk_while_logging_leaves_no_torn_line_and_the_run_resumes(image_folder, tmp_path, monkeypatch):
    run = tmp_path / "run"
    settings = dict(TINY_BYOL, epochs=2, log_every=1)
    real_open, calls = open, []

    def filling(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        calls.append(path)
        if len(calls) == 5:  # the fifth record: half of it fits on the disk
            handle.write('{"step": 4, "lo')
            handle.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return handle

    with monkeypatch.context() as full, pytest.raises(WriteFailed, match="metrics.jsonl \\(No space left on device"
                                                                        "\\); the last checkpoint is intact"):
        full.setattr(progress, "open", filling, raising=False)
        sslkit.pretrain("byol", image_folder, run, **settings)
    assert len(records(run)) == 4  # whole lines only
    sslkit.pretrain("byol", image_folder, run, resume=True)
    sslkit.pretrain("byol", image_folder, tmp_path / "whole", **settings)
    steps = [r.get("loss") for r in records(run) if "loss" in r]
    assert steps == [r.get("loss") for r in records(tmp_path / "whole") if "loss" in r]


def test_resume_drops_a_torn_last_metrics_line_with_a_notice(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    settings = dict(TINY_BYOL, epochs=2, log_every=1)
    with interrupt_at(BYOL, step=1), pytest.raises(Interrupted):
        sslkit.pretrain("byol", image_folder, run, **settings)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 3, "loss": 0.')  # a write cut short by a crash
    sslkit.pretrain("byol", image_folder, run, resume=True)
    assert "dropped 1 line(s) that are not whole records" in capsys.readouterr().err
    sslkit.pretrain("byol", image_folder, tmp_path / "whole", **settings)
    assert [r.get("loss") for r in records(run)] == [r.get("loss") for r in records(tmp_path / "whole")]
    whole, resumed = (ckpt.read_tensors(p / "checkpoints" / "last.safetensors", "model.") for p in (tmp_path / "whole",
                                                                                                     run))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
