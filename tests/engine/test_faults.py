"""Faults never cost more than the steps since the last checkpoint: signals, kills mid-save, full disks,
out-of-memory errors, and runs started over an earlier one."""

import json
import os
import signal
import subprocess
import sys
import time

import torch
from typer.testing import CliRunner

import sslkit
from sslkit.cli import app
from sslkit.engine import checkpoint as ckpt
from sslkit.methods.byol import BYOL
from tests.conftest import TINY_BYOL

runner = CliRunner()


def cli_args(settings: dict) -> list[str]:
    args = []
    for name, value in settings.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def model_tensors(run) -> dict:
    return ckpt.read_tensors(run / "checkpoints" / "last.safetensors", "model.")


def wait_for_step(metrics, step: int, process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the run ended before step {step}: {process.stderr.read()}")
        if metrics.exists():
            steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line.strip()]
            if steps and max(steps) >= step:
                return
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout} s")


def test_sigterm_to_the_whole_job_checkpoints_exits_143_and_resumes_to_the_uninterrupted_result(tmp_path,
                                                                                                image_folder):
    """As SLURM's scancel does, the signal reaches the main process and its data-loading worker alike."""
    settings = dict(TINY_BYOL, workers=1, epochs=10, log_every=1)
    run = tmp_path / "cut"
    process = subprocess.Popen([sys.executable, "-m", "sslkit", "pretrain", "byol", str(image_folder), "--out",
                                str(run), *cli_args(settings)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    wait_for_step(run / "metrics.jsonl", 2, process)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "resume with --resume" in stderr and "Traceback" not in stderr
    stopped_at = int(ckpt.read_metadata(run / "checkpoints" / "last.safetensors")["step"])
    assert 2 <= stopped_at < 30
    sslkit.pretrain("byol", image_folder, run, resume=True)
    sslkit.pretrain("byol", image_folder, tmp_path / "whole", **settings)
    whole, resumed = model_tensors(tmp_path / "whole"), model_tensors(run)
    assert set(whole) == set(resumed) and all(torch.equal(whole[k], resumed[k]) for k in whole)


SAVE_LOOP = """
import sys, torch
from sslkit.engine import checkpoint as ckpt
path = sys.argv[1]
ckpt.save_checkpoint(path, {"x": torch.zeros(4)}, {"n": "0"})
print("saved", flush=True)
big, n = torch.randn(32_000_000), 1
while True:
    ckpt.save_checkpoint(path, {"x": big, "n": torch.tensor(n)}, {"n": str(n)})
    n += 1
"""


def test_a_process_killed_while_saving_leaves_a_valid_checkpoint(tmp_path):
    path = tmp_path / "last.safetensors"
    tmp = tmp_path / "last.safetensors.tmp"
    process = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "saved"
    deadline = time.monotonic() + 60
    while not tmp.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    process.kill()  # SIGKILL: no handler, no cleanup
    process.wait()
    assert tmp.exists()  # it died mid-write
    metadata = ckpt.read_metadata(path)
    tensors = ckpt.read_tensors(path)
    if metadata["n"] == "0":
        assert torch.equal(tensors["x"], torch.zeros(4))
    else:  # a save finished before the kill: that one, whole
        assert tensors["x"].numel() == 32_000_000 and int(tensors["n"]) == int(metadata["n"])
    ckpt.save_checkpoint(path, {"x": torch.ones(2)}, {"n": "next"})  # the leftover temporary file is no obstacle
    assert ckpt.read_metadata(path)["n"] == "next" and not tmp.exists()


def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_previous_checkpoint(tmp_path, image_folder,
                                                                                  monkeypatch):
    real_save, calls = ckpt.save_file, []

    def save_until_full(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) > 1:
            with open(filename, "wb") as handle:
                handle.write(b"\0" * 100)
            raise OSError(28, "No space left on device")
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", save_until_full)
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "byol", str(image_folder), "--out", str(run),
                                 *cli_args(dict(TINY_BYOL, epochs=3))])
    assert result.exit_code == 1
    assert "No space left on device" in result.output and "the previous file is intact" in result.output
    assert "Traceback" not in result.output
    assert ckpt.read_metadata(run / "checkpoints" / "last.safetensors")["epoch"] == "1"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.safetensors"]


def test_out_of_memory_names_the_options_that_help(tmp_path, image_folder, monkeypatch):
    def no_memory(self, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 8 GiB total)\nmore")

    monkeypatch.setattr(BYOL, "training_step", no_memory)
    result = runner.invoke(app, ["pretrain", "byol", str(image_folder), "--out", str(tmp_path / "run"),
                                 *cli_args(TINY_BYOL)])
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "--batch-size" in line and "--accum-steps" in line and "--precision bf16" in line


def test_a_run_directory_is_not_overwritten_without_force_and_force_clears_only_the_run(tmp_path, image_folder):
    run = tmp_path / "run"
    settings = cli_args(dict(TINY_BYOL, epochs=3))
    result = runner.invoke(app, ["pretrain", "byol", str(image_folder), "--out", str(run), "--keep", "2", *settings])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["epoch-0002.safetensors", "epoch-0003.safetensors", "last.safetensors"]
    newest = run / "checkpoints" / "epoch-0003.safetensors"
    assert newest.read_bytes() == (run / "checkpoints" / "last.safetensors").read_bytes()
    assert ckpt.read_metadata(run / "checkpoints" / "epoch-0002.safetensors")["epoch"] == "2"
    (run / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["pretrain", "byol", str(image_folder), "--out", str(run), *settings])
    assert result.exit_code == 2 and "already holds a run" in result.output and "--force" in result.output
    assert newest.exists()
    result = runner.invoke(app, ["pretrain", "byol", str(image_folder), "--out", str(run), "--force",
                                 *cli_args(dict(TINY_BYOL, epochs=1))])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.safetensors"]
    assert (run / "notes.txt").read_text() == "mine"
    epochs = {json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()}
    assert epochs == {1}  # the earlier run's metrics are gone, not mixed in
    other = tmp_path / "other"
    other.mkdir()
    (other / "photo.jpg").write_bytes(b"not mine to delete")
    result = runner.invoke(app, ["pretrain", "byol", str(image_folder), "--out", str(other), *settings])
    assert result.exit_code == 2 and "already holds other files" in result.output

