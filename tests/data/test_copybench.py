import csv
import hashlib
import json
import random

import numpy as np
import pytest
from PIL import Image

from sslkit.data.attacks import ATTACKS, crop, jpeg, strong_copy
from sslkit.data.copybench import make_benchmark
from sslkit.errors import UsageError
from sslkit.evaluate.settings import BenchmarkConfig
from tests.conftest import make_folder


def _image(width=120, height=90, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_gives_an_rgb_image_that_differs_and_repeats_with_its_seed(name):
    image = _image()
    first = ATTACKS[name](image, random.Random(3))
    again = ATTACKS[name](image, random.Random(3))
    assert first.mode == "RGB" and first.width >= 2 and first.height >= 2
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert first.size != image.size or not np.array_equal(np.asarray(first), np.asarray(image))


def test_crops_keep_30_to_80_percent_of_the_area():
    image = _image(200, 150)
    shares = [(lambda c: c.width * c.height / (200 * 150))(crop(image, random.Random(s))) for s in range(200)]
    assert 0.28 <= min(shares) and max(shares) <= 0.82  # rounding of the sides aside
    assert max(shares) - min(shares) > 0.3


def test_jpeg_attack_uses_a_low_quality():
    image = _image(64, 64)
    assert np.abs(np.asarray(jpeg(image, random.Random(0)), dtype=int) - np.asarray(image, dtype=int)).mean() > 10


def test_strong_copies_combine_two_to_four_distinct_attacks_with_jpeg_last():
    counts = set()
    for seed in range(60):
        _, names = strong_copy(_image(48, 40), random.Random(seed))
        counts.add(len(names))
        assert len(set(names)) == len(names) and set(names) <= set(ATTACKS)
        assert "jpeg" not in names or names[-1] == "jpeg"
    assert counts == {2, 3, 4}


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "benchmark.json"}


def test_benchmark_layout_ground_truth_and_same_seed_same_bytes(tmp_path):
    source = make_folder(tmp_path / "src", classes=2, per_class=10, size=48)
    options = BenchmarkConfig(originals=6, copies=2, distractors=4, whiten=3, seed=5)
    summary = make_benchmark(source, tmp_path / "a", options, workers=0)
    out = tmp_path / "a"
    assert summary["originals"] == 6 and summary["num_queries"] == 12
    assert len(list((out / "database").iterdir())) == 6 and len(list((out / "queries").iterdir())) == 12
    assert len(list((out / "distractors").iterdir())) == 4 and len(list((out / "whiten").iterdir())) == 3
    rows = list(csv.DictReader((out / "ground_truth.csv").open()))
    assert [r["query"] for r in rows[:2]] == ["000000_1.jpg", "000000_2.jpg"]
    assert all((out / "queries" / r["query"]).is_file() and (out / "database" / r["original"]).is_file() for r in rows)
    assert all(2 <= len(r["attacks"].split(";")) <= 4 for r in rows)
    assert json.loads((out / "benchmark.json").read_text())["seed"] == 5
    make_benchmark(source, tmp_path / "b", options, workers=2)  # worker processes change nothing
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    make_benchmark(source, tmp_path / "c", BenchmarkConfig(originals=6, copies=2, distractors=4, whiten=3, seed=6))
    assert _digests(tmp_path / "a") != _digests(tmp_path / "c")


def test_benchmark_refuses_a_full_folder_and_too_few_images_and_leaves_nothing_behind(tmp_path):
    source = make_folder(tmp_path / "src", classes=1, per_class=5, size=32)
    out = tmp_path / "bench"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for force in (False, True):  # --force replaces an earlier benchmark, never a folder of the user's
        with pytest.raises(UsageError, match="not an sslkit benchmark"):
            make_benchmark(source, out, BenchmarkConfig(originals=2), force=force)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(UsageError, match="has 5 readable images"):
        make_benchmark(source, tmp_path / "other", BenchmarkConfig(originals=4, distractors=2))
    assert not (tmp_path / "other").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench", "src"]  # no partial folder left
    (out / "keep.txt").unlink()
    make_benchmark(source, out, BenchmarkConfig(originals=2, copies=2))
    with pytest.raises(UsageError, match="already holds a benchmark"):
        make_benchmark(source, out, BenchmarkConfig(originals=2, copies=1))
    make_benchmark(source, out, BenchmarkConfig(originals=2, copies=1), force=True)
    assert len(list((out / "queries").iterdir())) == 2
    summary = make_benchmark(source, tmp_path / "auto", BenchmarkConfig(distractors=1))
    assert summary["originals"] == 4  # the default takes what the source has left


def test_benchmark_options_are_checked(tmp_path):
    source = make_folder(tmp_path / "src", classes=1, per_class=3, size=32)
    for settings, message in (({"copies": 0}, "--copies"),
                              ({"max_attacks": 11}, "--max-attacks"),
                              ({"quality": 0}, "--quality"),
                              ({"distractors": -1}, "--distractors")):
        with pytest.raises(UsageError, match=message):  # the settings check themselves as they are made
            make_benchmark(source, tmp_path / "out", BenchmarkConfig(**settings))
