"""Output folders that hold the user's files, through the real CLI: sslkit refuses with one line (or, with
--force, writes beside them) and every file that was there before is byte for byte the same afterwards."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import sslkit
from tests.cli.conftest import assert_usage_error
from tests.conftest import make_folder

MAE = dict(arch="test_vit", img_size=32, decoder_dim=32, decoder_depth=1, decoder_heads=2, batch_size=8, workers=0,
           device="cpu", precision="fp32", epochs=1)
BYOL_OPTIONS = ("--arch", "test_resnet", "--img-size", "32", "--projector-hidden-dim", "16", "--projector-dim", "8",
                "--predictor-hidden-dim", "16", "--batch-size", "4", "--epochs", "1", "--workers", "0",
                "--device", "cpu", "--precision", "fp32")


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def unchanged(before: dict[str, str], folder: Path) -> bool:
    after = digests(folder)
    return all(after.get(name) == digest for name, digest in before.items())


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mae")
    sslkit.pretrain("mae", make_folder(root / "images", per_class=4), root / "run", **MAE)
    return root / "run"


@pytest.mark.parametrize("command", ["reconstruct", "attention"])
def test_an_out_folder_holding_the_photos_is_refused_and_force_never_overwrites_them(sslkit_cli, mae_run, tmp_path,
                                                                                      command):
    photos = make_folder(tmp_path / "photos", classes=1, per_class=3, labelled=False)
    (photos / "notes.txt").write_text("mine")
    before = digests(photos)
    assert_usage_error(sslkit_cli.run(command, mae_run, photos, "--out", photos), "holds files sslkit did not write",
                       "--force")
    result = sslkit_cli.run(command, mae_run, photos, "--out", photos, "--force")
    if command == "reconstruct":  # its strips would be photos/<name>.png: the inputs themselves
        assert_usage_error(result, "would replace the input")
    else:  # attention writes photos/<name>/...: beside the photos
        assert result.code == 0, result.stderr
        assert (photos / "c0_000" / "attn-mean.png").is_file()
    assert unchanged(before, photos)


def test_a_second_output_into_the_same_folder_replaces_only_its_own_files(sslkit_cli, mae_run, tmp_path):
    photos = make_folder(tmp_path / "photos", classes=1, per_class=2, labelled=False)
    out = tmp_path / "recon"
    assert sslkit_cli.run("reconstruct", mae_run, photos, "--out", out).code == 0
    assert sslkit_cli.run("reconstruct", mae_run, photos, "--out", out, "--seed", "1").code == 0
    assert sorted(p.name for p in out.iterdir()) == [".sslkit-output.json", "c0_000.png", "c0_001.png",
                                                     "reconstruct.json"]
    (out / "mine.png").write_bytes((out / "c0_000.png").read_bytes())
    (photos / "mine.png").write_bytes((out / "c0_000.png").read_bytes())  # an input named like none of ours
    before = digests(out)
    assert_usage_error(sslkit_cli.run("reconstruct", mae_run, photos, "--out", out), "mine.png")
    result = sslkit_cli.run("reconstruct", mae_run, photos, "--out", out, "--force")
    assert_usage_error(result, "mine.png exists and sslkit did not write it")
    assert digests(out) == before


def test_make_benchmark_never_writes_into_or_around_its_source(sslkit_cli, tmp_path):
    source = make_folder(tmp_path / "src", classes=1, per_class=6, labelled=False)
    (source / "sub").mkdir()
    before, entries = digests(source), sorted(p.name for p in tmp_path.rglob("*"))
    for out in (source, source / "sub" / "bench", tmp_path):
        for force in ((), ("--force",)):
            result = sslkit_cli.run("copydetect", "make-benchmark", source, out, "--originals", "2", *force)
            assert_usage_error(result, "overlap")
    assert digests(source) == before and sorted(p.name for p in tmp_path.rglob("*")) == entries


def test_pretrain_force_keeps_the_users_files_and_config_never_carries_force(sslkit_cli, tmp_path):
    images = make_folder(tmp_path / "images", per_class=6)
    run = tmp_path / "run"
    assert sslkit_cli.run("pretrain", "byol", images, "--out", run, *BYOL_OPTIONS).code == 0
    (run / "checkpoints" / "teacher.pth").write_bytes(b"the user's weights")
    (run / "notes.txt").write_text("mine")
    result = sslkit_cli.run("pretrain", "byol", images, "--out", run, *BYOL_OPTIONS, "--force")
    assert result.code == 0, result.stderr
    assert (run / "checkpoints" / "teacher.pth").read_bytes() == b"the user's weights"
    assert (run / "notes.txt").read_text() == "mine"
    assert "force" not in json.loads((run / "config.json").read_text())["train"]
    other = tmp_path / "other"
    assert sslkit_cli.run("pretrain", "byol", images, "--out", other, *BYOL_OPTIONS).code == 0
    before = digests(other)
    result = sslkit_cli.run("pretrain", "byol", images, "--out", other, "--config", run / "config.json")
    assert_usage_error(result, "already holds a run")
    (tmp_path / "forced.toml").write_text("[train]\nforce = true\n")
    result = sslkit_cli.run("pretrain", "byol", images, "--out", other, *BYOL_OPTIONS, "--config",
                            tmp_path / "forced.toml")
    assert result.code == 2 and len(result.lines) == 2  # a file's force is not the command line's
    assert result.lines[0].startswith("warning: ignoring force in") and "already holds a run" in result.lines[1]
    assert digests(other) == before


def test_force_with_a_bad_value_fails_before_touching_the_earlier_run(sslkit_cli, tmp_path):
    images = make_folder(tmp_path / "images", per_class=6)
    run = tmp_path / "run"
    assert sslkit_cli.run("pretrain", "byol", images, "--out", run, *BYOL_OPTIONS).code == 0
    before = digests(run)
    for bad in (("--lr", "nan"), ("--weight-decay", "inf"), ("--warmup-epochs", "-1")):
        assert_usage_error(sslkit_cli.run("pretrain", "byol", images, "--out", run, *BYOL_OPTIONS, "--force", *bad),
                           bad[0])
    assert digests(run) == before


def test_force_in_a_folder_that_is_not_a_run_refuses_to_touch_files_with_a_runs_names(sslkit_cli, tmp_path):
    images = make_folder(tmp_path / "images", per_class=6)
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "checkpoints" / "best.safetensors").write_bytes(b"the user's own")
    (mine / "notes.txt").write_text("mine")
    before = digests(mine)
    result = sslkit_cli.run("pretrain", "byol", images, "--out", mine, *BYOL_OPTIONS, "--force")
    assert_usage_error(result, "checkpoints/best.safetensors", "never overwrites them")
    assert digests(mine) == before


def test_a_run_is_not_written_into_its_own_data(sslkit_cli, tmp_path):
    images = make_folder(tmp_path / "images", per_class=6)
    before = digests(images)
    for out in (images, images / "class0" / "run"):
        assert_usage_error(sslkit_cli.run("pretrain", "byol", images, "--out", out, *BYOL_OPTIONS, "--force"),
                           "which the run reads")
    assert digests(images) == before and not (images / "class0" / "run").exists()
