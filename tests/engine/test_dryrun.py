"""--dry-run through the API: the plan holds the values the run logs, and it never touches an existing run."""

import json
import os

import pytest

import sslkit
from sslkit.config import TrainConfig
from sslkit.engine import dryrun, rundir
from sslkit.engine.schedules import step_values
from sslkit.errors import Interrupted, UsageError
from sslkit.methods.byol import BYOL
from sslkit.visualize.schedules import PLAN_NAME
from tests.conftest import TINY_BYOL, interrupt_at

TINY_DINO = dict(arch="test_vit", img_size=32, out_dim=64, local_crops_number=2, batch_size=8, workers=0,
                 device="cpu", precision="fp32")


def logged(run) -> dict[int, dict]:
    """metrics.jsonl's per-step records (those with an lr), by step."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if "lr" in r}


def assert_plan_equals_log(plan: dict, run, names: tuple[str, ...]) -> None:
    records = logged(run)
    schedules = plan["schedules"]
    assert sorted(records) == schedules["step"] == list(range(1, plan["total_steps"] + 1))
    for i, step in enumerate(schedules["step"]):
        for name in names:
            assert schedules[name][i] == records[step][name], (name, step)  # the same float, not a close one
        assert schedules["epoch"][i] == records[step]["epoch"]


def listing(folder) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_byol_plan_equals_the_run_log_the_run_needs_no_force_and_a_later_dry_run_changes_nothing(
        image_folder, tmp_path):
    run, settings = tmp_path / "run", dict(TINY_BYOL, epochs=2, log_every=1)
    plan = sslkit.pretrain("byol", image_folder, run, dry_run=True, **settings)
    assert sorted(p.name for p in run.iterdir()) == [PLAN_NAME]  # no config.json, metrics or checkpoint
    assert plan["picture"] == str(run / PLAN_NAME) and plan["not_written"] is None and plan["refusal"] is None
    assert (plan["num_images"], plan["steps_per_epoch"], plan["total_steps"]) == (24, 3, 6)
    assert plan["settings"]["train"]["optimizer"] == "lars" and plan["settings"]["byol"]["tau_base"] == 0.97
    assert plan["settings"]["decided"]["precision"] == "fp32"

    sslkit.pretrain("byol", image_folder, run, **settings)  # no --force: a plan alone counts as empty
    assert_plan_equals_log(plan, run, ("lr", "weight_decay", "tau"))
    assert plan["summary"]["tau"] == {"start": 0.97, "peak": plan["schedules"]["tau"][-1],
                                      "end": plan["schedules"]["tau"][-1]}
    assert (run / PLAN_NAME).is_file() and rundir.is_plan(run / PLAN_NAME)

    before = listing(run)  # a dry run into the finished run: nothing there changes
    again = sslkit.pretrain("byol", image_folder, run, dry_run=True, **settings)
    assert listing(run) == before
    assert again["picture"] is None and again["not_written"] == f"{run} holds a run"
    assert "already holds a run" in again["refusal"]  # what the run itself would say

    continued = sslkit.pretrain("byol", image_folder, tmp_path / "next", dry_run=True, continue_from=str(run),
                                **settings)  # the weights are checked to fit the model, which stays on meta
    assert continued["settings"]["continue"]["continue_from"] == str(run)


def test_dino_plan_equals_what_the_run_logs_with_its_teacher_schedules(image_folder, tmp_path):
    run = tmp_path / "run"
    settings = dict(TINY_DINO, epochs=3, log_every=1, teacher_temp=0.04, warmup_teacher_temp_epochs=2)
    plan = sslkit.pretrain("dino", image_folder, run, dry_run=True, **settings)
    sslkit.pretrain("dino", image_folder, run, **settings)
    assert_plan_equals_log(plan, run, ("lr", "weight_decay", "momentum", "teacher_temp"))
    summary = plan["summary"]
    assert summary["teacher_temp"] == {"start": 0.02, "peak": 0.04, "end": 0.04}
    assert summary["weight_decay"]["start"] == pytest.approx(0.04) and summary["lr"]["start"] == 0.0  # warm-up from 0
    assert summary["lr"]["peak"] == max(r["lr"] for r in logged(run).values())
    assert plan["last_layer_frozen_epochs"] == [1]


def test_mae_plan_has_lr_and_weight_decay_only(image_folder, tmp_path):
    plan = sslkit.pretrain("mae", image_folder, tmp_path / "run", dry_run=True, arch="test_vit", img_size=32,
                           batch_size=8, epochs=2, workers=0, device="cpu")
    assert set(plan["summary"]) == {"lr", "weight_decay"} and plan["last_layer_frozen_epochs"] == []
    assert plan["settings"]["train"]["lr"] == pytest.approx(1.5e-4 * 8 / 256)  # blr x batch / 256


def test_a_folder_of_other_files_gets_no_picture_and_a_users_schedules_png_is_not_a_plan(image_folder, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / PLAN_NAME).write_bytes(b"\x89PNG not sslkit's")
    plan = sslkit.pretrain("byol", image_folder, out, dry_run=True, **TINY_BYOL)
    assert plan["not_written"] == f"{out} holds other files" and (out / PLAN_NAME).read_bytes().endswith(b"sslkit's")
    assert not rundir.is_plan(out / PLAN_NAME) and rundir.run_files(out) == []
    with pytest.raises(UsageError, match="already holds other files"):
        rundir.check_new_run(out, force=False)


def test_a_later_dry_run_replaces_its_own_plan(image_folder, tmp_path):
    run = tmp_path / "run"
    sslkit.pretrain("byol", image_folder, run, dry_run=True, **dict(TINY_BYOL, epochs=1))
    plan = sslkit.pretrain("byol", image_folder, run, dry_run=True, **dict(TINY_BYOL, epochs=2))
    assert plan["picture"] == str(run / PLAN_NAME) and os.listdir(run) == [PLAN_NAME]


def test_dry_run_with_resume_shows_the_rest_of_the_run_from_its_saved_step(image_folder, tmp_path):
    run, settings = tmp_path / "run", dict(TINY_BYOL, epochs=2, log_every=1)
    with interrupt_at(BYOL, step=1), pytest.raises(Interrupted):
        sslkit.pretrain("byol", image_folder, run, **settings)
    before = listing(run)
    plan = sslkit.pretrain("byol", image_folder, run, resume=True, dry_run=True, device="cpu")
    assert listing(run) == before and plan["not_written"] == f"{run} holds a run"
    assert plan["start_step"] == 2 and plan["total_steps"] == 6
    assert plan["at_resume"] == {name: plan["schedules"][name][2] for name in ("lr", "weight_decay", "tau")}
    assert "resumes after step 2 of 6, in epoch 1" in plan["notes"]


def test_dry_run_with_resume_needs_a_run(image_folder, tmp_path):
    with pytest.raises(UsageError, match="not an sslkit run"):
        sslkit.pretrain("byol", image_folder, tmp_path / "none", resume=True, dry_run=True)


def test_dry_run_refuses_what_the_run_refuses(image_folder, tmp_path):
    with pytest.raises(UsageError, match="larger than the data set"):
        sslkit.pretrain("byol", image_folder, tmp_path / "a", dry_run=True, **dict(TINY_BYOL, batch_size=64))
    with pytest.raises(UsageError, match="BatchNorm needs at least 2 images"):
        sslkit.pretrain("byol", image_folder, tmp_path / "b", dry_run=True, **dict(TINY_BYOL, accum_steps=8))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_long_runs_are_sampled_keeping_the_first_last_peak_and_epoch_starts():
    cfg = TrainConfig(epochs=300, batch_size=256, lr=1.0, min_lr=0.0, warmup_epochs=10, weight_decay=0.04,
                      weight_decay_end=0.4)
    steps_per_epoch = 5004  # ImageNet at batch 256
    total = cfg.epochs * steps_per_epoch
    arrays = dryrun.schedule_arrays(cfg, steps_per_epoch, total)
    assert len(arrays["step"]) < 25_000 and arrays["step"][0] == 1 and arrays["step"][-1] == total
    assert {e * steps_per_epoch + 1 for e in range(cfg.epochs)} <= set(arrays["step"])
    summary = dryrun.summarize(arrays)
    assert summary["lr"]["peak"] == 1.0 and summary["lr"]["start"] == 0.0
    assert summary["weight_decay"]["end"] == step_values(cfg, total - 1, total, steps_per_epoch)[1]


def test_a_config_files_dry_run_is_dropped():
    from sslkit import config

    assert "dry_run" not in config.flatten({"train": {"dry_run": True, "epochs": 3}})
    assert "dry_run" not in config.recorded({"train": {"dry_run": True}})["train"]
