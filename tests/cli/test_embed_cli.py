"""sslkit embed through the real command line (tests/cli/conftest.py's fork server)."""

from __future__ import annotations

import csv
import json
import re

import pytest

from tests.cli.conftest import assert_usage_error
from tests.conftest import make_folder

TINY = ("--img-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--precision", "fp32")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("embed-cli") / "data", classes=2, per_class=3)
    (root / "class1" / "c1_002.png").rename(root / "class1" / "a, b.png")
    return root


def test_embed_writes_a_csv_and_says_so_in_one_line(sslkit_cli, data, tmp_path):
    out = tmp_path / "x.csv"
    result = sslkit_cli.run("embed", "timm:test_resnet", data, "--out", out, "--labels", "--json", tmp_path / "s.json",
                            *TINY)
    assert result.code == 0, result.stderr
    assert re.fullmatch(rf"wrote 6 embeddings of dimension \d+ to {re.escape(str(out))} in \d+\.\d s",
                        result.lines[-1]), result.stderr
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    summary = json.loads((tmp_path / "s.json").read_text())
    assert len(rows) == 7 and len(rows[0]) == 2 + summary["dim"] and ["class1/a, b.png", "class1"] == rows[4][:2]
    assert summary["num_images"] == 6 and summary["classes"] == ["class0", "class1"]


def test_quiet_prints_nothing_and_npy_names_its_lists(sslkit_cli, data, tmp_path):
    result = sslkit_cli.run("embed", "timm:test_resnet", data, "--out", tmp_path / "x.npy", "--quiet", *TINY)
    assert result.code == 0 and result.stderr == "" and result.stdout == ""
    assert (tmp_path / "x.txt").read_text().splitlines()[-1] == "class1/c1_001.png"
    result = sslkit_cli.run("embed", "timm:test_resnet", data, "--out", tmp_path / "y.npy", "--labels", *TINY)
    assert result.lines[-1].endswith(f"(file names in {tmp_path / 'y.txt'}, labels in {tmp_path / 'y.labels.txt'})")


def test_an_existing_out_is_refused_without_force_and_replaced_with_it(sslkit_cli, data, tmp_path):
    out = tmp_path / "x.safetensors"
    assert sslkit_cli.run("embed", "timm:test_resnet", data, "--out", out, *TINY).code == 0
    assert_usage_error(sslkit_cli.run("embed", "timm:test_resnet", data, "--out", out, *TINY), "exists", "--force")
    assert sslkit_cli.run("embed", "timm:test_resnet", data, "--out", out, "--force", *TINY).code == 0
    mine = tmp_path / "mine.csv"
    mine.write_text("not an embedding\n")
    result = sslkit_cli.run("embed", "timm:test_resnet", data, "--out", mine, "--force", *TINY)
    assert_usage_error(result, "replaces only an earlier output of sslkit embed")
    assert mine.read_text() == "not an embedding\n"


def test_tokens_patch_writes_the_grid_and_says_so_in_one_line(sslkit_cli, data, tmp_path):
    out = tmp_path / "p.safetensors"
    result = sslkit_cli.run("embed", "timm:test_vit", data, "--out", out, "--tokens", "patch", *TINY)
    assert result.code == 0, result.stderr
    assert re.fullmatch(rf"wrote 6 x 2 x 2 patch tokens of dimension 64 to {re.escape(str(out))} in \d+\.\d s",
                        result.lines[-1]), result.stderr


@pytest.mark.parametrize("options, phrase", [
    (("--format", "parquet"), "--format must be one of safetensors, npy, csv"),
    (("--format", "npy"), "names a .csv file but --format is npy"),
    (("--pool", "token"), "need a vision transformer"),
    (("--tokens", "mean"), "--tokens mean needs a vision transformer"),
    (("--tokens", "patch"), "--tokens patch writes an N x h x w x D array, which a CSV cannot hold"),
    (("--tokens", "all"), "--tokens must be one of cls, mean, cls+mean, patch, not 'all'"),
])
def test_bad_options_are_one_line(sslkit_cli, data, tmp_path, options, phrase):
    assert_usage_error(sslkit_cli.run("embed", "timm:test_resnet", data, "--out", tmp_path / "x.csv", *options, *TINY),
                       phrase)


def test_an_out_where_no_file_can_be_written_is_refused_while_parsing(sslkit_cli, data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = sslkit_cli.run("embed", "timm:test_resnet", data, "--out", blocker / "x.csv", *TINY)
    assert_usage_error(result, "is a file, not a folder")
    assert_usage_error(sslkit_cli.run("embed", "timm:test_resnet", data, "--out", tmp_path, *TINY), "is a folder")
    assert_usage_error(sslkit_cli.run("embed", "timm:test_resnet", data, "--out", tmp_path / "x.bin", *TINY),
                       "cannot tell the format")


def test_labels_need_class_folders_and_help_shows_examples(sslkit_cli, tmp_path):
    flat = make_folder(tmp_path / "flat", classes=1, per_class=2, labelled=False)
    result = sslkit_cli.run("embed", "timm:test_resnet", flat, "--out", tmp_path / "x.csv", "--labels", *TINY)
    assert_usage_error(result, "no class sub-folders")
    result = sslkit_cli.run("embed", "--help")
    assert result.code == 0 and "Examples" in result.stdout and "sslkit embed runs/dino" in result.stdout
