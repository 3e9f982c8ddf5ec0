"""Hostile images through the real CLI: a file that passes the listing checks and then makes Pillow raise
something other than OSError is skipped with one warning naming it, and a file name made to look like an
error line or to drive the terminal prints as one harmless line."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_bad_input import KNN, PRETRAIN_OPTIONS
from tests.conftest import make_folder
from tests.data.test_folders import broken_chunk_png

SKIPPING = "warning: skipping an image that fails to decode"
BROKEN_CHUNK = "broken PNG file (chunk b'\\x00!!!')"  # Pillow's SyntaxError


def warnings(result) -> list[str]:
    return [line for line in result.lines if "warning" in line]


@pytest.mark.parametrize("name, printed", [
    ("broken.png", "broken.png"),
    ("x\nerror: fake \x1b[2J.png", "x\\nerror: fake \\x1b[2J.png"),
])
def test_pretrain_skips_an_image_pillow_fails_on_with_syntax_error(sslkit_cli, tmp_path, name, printed):
    data = make_folder(tmp_path / "data", classes=1, per_class=7, size=24, labelled=False)
    broken_chunk_png(data / name)  # 8 images, batches of 4: every one is read in the epoch
    result = sslkit_cli.run("pretrain", "byol", data, "--out", tmp_path / "run", *PRETRAIN_OPTIONS)
    assert result.code == 0, result.stderr
    assert warnings(result) == [f"{SKIPPING}, {data}/{printed}: {BROKEN_CHUNK}"]
    assert "Traceback" not in result.stderr and "\x1b" not in result.stderr
    assert not any(line.startswith("error") for line in result.lines)
    assert "byol | 8 images" in result.stderr
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").exists()


def test_probe_knn_skips_an_image_pillow_fails_on_with_syntax_error(sslkit_cli, tmp_path, feature_cache):
    data = make_folder(tmp_path / "data", classes=2, per_class=4, size=24)
    bad = broken_chunk_png(data / "class0" / "broken.png")
    out = tmp_path / "knn.json"
    result = sslkit_cli.run(*KNN, "--train", data, "--val", data, "--json", out,
                            env={"SSLKIT_CACHE_DIR": str(feature_cache)})
    assert result.code == 0, result.stderr
    assert warnings(result) == [f"{SKIPPING}, {bad}: {BROKEN_CHUNK}"]
    assert 0 <= json.loads(out.read_text())["top1"] <= 100
