"""Faults that must not make a run unresumable or mix two runs, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys

from sslkit.engine import rundir
from tests.cli.conftest import ROOT, assert_usage_error
from tests.cli.test_bad_input import PRETRAIN_OPTIONS
from tests.conftest import make_folder


def test_two_runs_started_at_once_on_one_folder_do_not_mix(tmp_path):
    images = make_folder(tmp_path / "images", per_class=6)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "sslkit", "pretrain", "byol", str(images), "--out", str(run), *PRETRAIN_OPTIONS,
               "--epochs", "3"]
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    results = sorted((p.wait(timeout=300), p.stderr.read()) for p in processes)
    assert [code for code, _ in results] == [0, 2], results
    refusal = [line for line in results[1][1].splitlines() if line.strip()]
    assert len(refusal) == 1 and refusal[0].startswith("error: ")
    assert "in use by another run" in refusal[0] or "already holds a run" in refusal[0]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "epoch_loss" in r] == [1, 2, 3]  # one run's metrics, not two


def test_a_folder_in_use_is_refused_in_one_line(sslkit_cli, tmp_path):
    images = make_folder(tmp_path / "images", per_class=6)
    run = tmp_path / "run"
    with rundir.locked(run):
        assert_usage_error(sslkit_cli.run("pretrain", "byol", images, "--out", run, *PRETRAIN_OPTIONS),
                           "is in use by another run", "delete")


def test_resume_after_a_torn_metrics_line_drops_it_and_finishes(sslkit_cli, tmp_path):
    images = make_folder(tmp_path / "images", per_class=6)
    run = tmp_path / "run"
    assert sslkit_cli.run("pretrain", "byol", images, "--out", run, *PRETRAIN_OPTIONS).code == 0
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 99, "lo')
    result = sslkit_cli.run("pretrain", "byol", images, "--out", run, "--resume", "--epochs", "2")
    assert result.code == 2 and "--resume continues the run as it was configured" in result.stderr
    result = sslkit_cli.run("pretrain", "byol", images, "--out", run, "--resume")
    assert result.code == 0, result.stderr
    assert "dropped 1 line(s) that are not whole records" in result.stderr and "Traceback" not in result.stderr
    assert all(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
