"""--dry-run on the command line: the plan's tables on stdout, exit 0, nothing trained."""

import json
import os

import pytest

from sslkit.engine import rundir
from sslkit.visualize.schedules import PLAN_NAME
from tests.conftest import make_folder

CPU = ["--workers", "0", "--device", "cpu", "--precision", "fp32"]
TINY = {
    "byol": ["--arch", "test_resnet", "--img-size", "32", "--batch-size", "8", "--projector-hidden-dim", "64",
             "--projector-dim", "32", "--predictor-hidden-dim", "64"],
    "dino": ["--arch", "test_vit", "--img-size", "32", "--batch-size", "8", "--out-dim", "64",
             "--local-crops-number", "2"],
    "mae": ["--arch", "test_vit", "--img-size", "32", "--batch-size", "8"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("dry-run") / "data")


def assert_plan_shown(result, *schedules: str) -> None:
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "resolved settings" in result.stdout and "schedules over the optimizer steps" in result.stdout
    for name in ("learning rate", "weight decay", *schedules):
        assert name in result.stdout, name


@pytest.mark.parametrize("method, schedules", [("byol", ("target EMA tau",)),
                                               ("dino", ("teacher EMA momentum", "teacher temperature")),
                                               ("mae", ())])
def test_pretrain_dry_run_prints_the_plan_and_writes_only_its_picture(sslkit_cli, data, tmp_path, method, schedules):
    run = tmp_path / "run"
    result = sslkit_cli.run("pretrain", method, data, "--out", run, "--epochs", "2", *TINY[method], *CPU, "--dry-run")
    assert_plan_shown(result, *schedules)
    assert "24 images, 3 steps per epoch x 2 epochs = 6 steps, batch 8" in result.stdout
    assert f"schedules: {run / PLAN_NAME}" in result.stdout
    assert os.listdir(run) == [PLAN_NAME] and rundir.is_plan(run / PLAN_NAME)
    if method == "dino":
        assert "dino preset auto" in result.stderr and "last layer frozen (no update) in epochs 1-1" in result.stdout


def test_a_dry_run_into_a_folder_of_other_files_says_so_and_exits_0(sslkit_cli, data, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = sslkit_cli.run("pretrain", "byol", data, "--out", out, "--epochs", "1", *TINY["byol"], *CPU, "--dry-run")
    assert_plan_shown(result, "target EMA tau")
    assert f"schedules.png not written: {out} holds other files; the table above is the plan" in result.stdout
    assert "warning: the run itself would stop:" in result.stderr and "already holds other files" in result.stderr
    assert os.listdir(out) == ["notes.txt"]


def test_a_config_files_dry_run_is_ignored_with_the_one_shot_warning(sslkit_cli, data, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    config = tmp_path / "settings.toml"
    config.write_text("dry_run = true\nepochs = 1\n")
    result = sslkit_cli.run("pretrain", "byol", data, "--out", out, "--config", config, *TINY["byol"], *CPU)
    # not a dry run: the real run's check of --out stops it, which a dry run would only report
    assert result.code == 2, result.stderr
    assert result.lines[0].startswith("warning: ignoring dry_run in") and "--dry-run act once" in result.lines[0]
    assert "already holds other files" in result.lines[1]


def test_probe_linear_dry_run_shows_the_recipes_lr_and_draws_only_with_out(sslkit_cli, data, tmp_path):
    probe = ["probe", "linear", "timm:test_resnet", "--train", data, "--val", data, "--img-size", "32",
             "--batch-size", "8", "--epochs", "2", *CPU, "--dry-run"]
    result = sslkit_cli.run(*probe)
    assert_plan_shown(result)
    assert ("lrs: the dino recipe's grid x batch 8 / 256" in result.stdout
            and "12 heads, peak lr 3.125e-06" in result.stdout)
    assert "5-fold cross-validation" in result.stdout
    assert "schedules.png not written: no --out was given; the table above is the plan" in result.stdout
    result = sslkit_cli.run(*probe, "--out", tmp_path / "probe")
    assert_plan_shown(result)
    assert os.listdir(tmp_path / "probe") == [PLAN_NAME]


def test_finetune_dry_run_shows_the_automatic_batch_and_json_gets_the_plan(sslkit_cli, data, tmp_path):
    run, plan = tmp_path / "ft", tmp_path / "plan.json"
    result = sslkit_cli.run("finetune", "timm:test_resnet", "--train", data, "--val", data, "--out", run,
                            "--img-size", "32", "--epochs", "2", "--recipe", "mae", *CPU, "--dry-run", "--json", plan)
    assert_plan_shown(result)
    assert "24 images, 3 steps per epoch x 2 epochs = 6 steps, batch 8" in result.stdout
    assert "batch 8: chosen for 24 images" in result.stdout and "layer decay 1" in result.stdout
    assert "fine-tuning" in result.stderr and "of 24 labelled images" in result.stderr
    assert os.listdir(run) == [PLAN_NAME]
    written = json.loads(plan.read_text())
    assert written["dry_run"] and written["schedules"]["step"] == [1, 2, 3, 4, 5, 6]
    assert written["settings"]["train"]["lr"] == 5e-4 * 8 / 256  # blr x the automatic batch / 256


def test_finetune_dry_run_on_few_labels_shows_the_semi_supervised_recipe_and_the_lr_grid(sslkit_cli, data, tmp_path):
    run, plan = tmp_path / "ft", tmp_path / "plan.json"
    result = sslkit_cli.run("finetune", "timm:test_resnet", "--train", data, "--val", data, "--out", run,
                            "--img-size", "32", *CPU, "--dry-run", "--json", plan)
    assert_plan_shown(result)
    assert "semi-supervised recipe: 24 labelled images" in result.stdout
    assert "lr: chosen from 0.005, 0.01, 0.02, 0.05, 0.1 on held-out training images" in result.stdout
    settings = json.loads(plan.read_text())["settings"]
    assert settings["train"]["optimizer"] == "sgd" and settings["train"]["nesterov"] is True
    assert settings["train"]["epochs"] == 60 and settings["train"]["lr"] == 0.02  # 8 per class: SimCLR's 1 % length
    assert settings["finetune"]["recipe"] == "semi-supervised" and settings["finetune"]["randaug"] == "none"
    assert os.listdir(run) == [PLAN_NAME]
