import csv
import json

import pytest
from typer.testing import CliRunner

from sslkit.cli import app, command_line
from tests.conftest import make_folder


class _Runner(CliRunner):
    """Typer's runner, handed the command line as sslkit.cli.main hands it to Typer (copydetect MODEL: search)."""

    def invoke(self, app, args=None, **kwargs):
        return super().invoke(app, command_line(list(args or [])), **kwargs)


runner = _Runner()
FAST = ["--img-size", "32", "--batch-size", "8", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("copydetect")
    source = make_folder(root / "src", classes=3, per_class=8, size=48, labelled=False)
    result = runner.invoke(app, ["copydetect", "make-benchmark", str(source), str(root / "bench"), "--originals", "8",
                                 "--copies", "2", "--distractors", "6", "--whiten", "8", "--workers", "0",
                                 "--max-size", "48"])
    assert result.exit_code == 0, result.output
    assert "8 originals, 16 queries" in result.output
    return root / "bench"


def _search(bench, model, *extra):
    return ["copydetect", model, "--database", str(bench / "database"), "--queries", str(bench / "queries"),
            "--ground-truth", str(bench / "ground_truth.csv"), *FAST, *extra]


def test_copydetect_end_to_end_on_a_generated_benchmark(bench, tmp_path):
    out, matches = tmp_path / "cd.json", tmp_path / "matches.csv"
    result = runner.invoke(app, _search(bench, "timm:test_resnet", "--distractors", str(bench / "distractors"),
                                        "--whiten", str(bench / "whiten"), "--top-k", "5", "--json", str(out),
                                        "--matches", str(matches)))
    assert result.exit_code == 0, result.output
    assert "mAP %" in result.output and "per attack" in result.output
    scores = json.loads(out.read_text())
    assert scores["num_queries"] == 16 and scores["num_database"] == 8 and scores["num_distractors"] == 6
    assert scores["whitening"] == {"folder": str(bench / "whiten"), "images": 8, "power": 0.5}
    assert scores["queries_with_copies"] == 16 and scores["top_k"] == 5
    assert 0 <= scores["map"] <= 100 and 0 <= scores["micro_ap"] <= 100 and "recall@10" not in scores
    assert 0 <= scores["recall@1"] <= scores["recall@5"] <= 100
    assert scores["map"] == pytest.approx(sum(scores["ap"]) / 16 * 100, abs=0.02)
    assert set(scores["groups"]) <= {"blur", "colour", "crop", "flip", "jpeg", "paint", "perspective", "print-scan",
                                     "rotate", "text"}
    assert scores["descriptor"].startswith("GeM (p=4)") and scores["dim"] == 96  # test_resnet's last feature map
    rows = list(csv.DictReader(matches.open()))
    assert len(rows) == 16 * 5 and rows[0]["rank"] == "1" and set(r["copy"] for r in rows) <= {"0", "1"}
    assert all(float(a["score"]) >= float(b["score"]) for a, b in zip(rows, rows[1:]) if a["query"] == b["query"])


def test_an_image_matches_itself_with_score_one(bench, tmp_path):
    out = tmp_path / "self.json"
    args = ["copydetect", "timm:test_vit", "--database", str(bench / "database"), "--queries", str(bench / "database"),
            "--ground-truth", "prefix:100", "--json", str(out), "--matches", str(tmp_path / "m.csv"), *FAST]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    scores = json.loads(out.read_text())
    assert scores["map"] == 100.0 and scores["recall@1"] == 100.0 and scores["dim"] == 2 * 64
    top = [r for r in csv.DictReader((tmp_path / "m.csv").open()) if r["rank"] == "1"]
    assert all(r["query"] == r["match"] and float(r["score"]) == pytest.approx(1.0, abs=1e-5) for r in top)


def test_second_search_reads_every_descriptor_from_the_cache(bench, tmp_path):
    args = _search(bench, "pixels:4", "--json", str(tmp_path / "a.json"))
    first = runner.invoke(app, args)
    second = runner.invoke(app, args[:-1] + [str(tmp_path / "b.json")])
    assert first.exit_code == 0 and second.exit_code == 0, first.output
    assert "read from the cache" not in first.stderr and second.stderr.count("read from the cache") == 2
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a["map"] == b["map"] and a["ap"] == b["ap"] and a["descriptor"] == "pixels" and a["dim"] == 48


def test_without_ground_truth_it_lists_matches_only(bench, tmp_path):
    result = runner.invoke(app, ["copydetect", "pixels:4", "--database", str(bench / "database"), "--queries",
                                 str(bench / "queries"), "--json", str(tmp_path / "r.json"), *FAST])
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "r.json").read_text())
    assert "map" not in scores and len(scores["examples"]) == 10 and "best match" in result.output


def test_copydetect_help_shows_both_commands_with_examples():
    for args in (["copydetect", "--help"], ["copydetect", "search", "--help"],
                 ["copydetect", "make-benchmark", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Examples" in result.output and "sslkit copydetect" in result.output
    assert "copydetect" in runner.invoke(app, ["--help"]).output


@pytest.mark.parametrize("args, message", [
    (["copydetect", "pixels:4", "--database", "{tmp}/none", "--queries", "{data}"], "error: folder not found"),
    (["copydetect", "pixels:x", "--database", "{data}", "--queries", "{data}"], "error: 'pixels:x': write pixels:N"),
    (["copydetect", "pixels:4", "--database", "{data}", "--queries", "{data}", "--top-k", "0"],
     "error: --top-k must be positive"),
    (["copydetect", "pixels:4", "--database", "{data}", "--queries", "{data}", "--ground-truth", "{tmp}/gt.csv"],
     "error: --ground-truth: no such file"),
    (["copydetect", "timm:test_vit", "--database", "{data}", "--queries", "{data}", "--img-size", "40"],
     "error: --img-size 40 is not a multiple"),
    (["copydetect", "timm:test_resnet", "--database", "{data}", "--queries", "{data}", "--pool", "token"],
     "error: --pool token"),
    (["copydetect", "pixels:4", "--database", "{data}", "--queries", "{data}", "--min-score", "2"],
     "error: --min-score is a cosine"),
    (["copydetect", "make-benchmark", "{data}", "{data}"], "error: "),
    (["copydetect", "make-benchmark", "{tmp}/none", "{tmp}/out"], "error: folder not found"),
    (["finetune", "pixels:4", "--train", "{data}", "--val", "{data}", "--out", "{tmp}/ft"],
     "error: pixels:4 has no weights"),
])
def test_copydetect_bad_input_exits_2_with_one_line(tmp_path, args, message):
    data = make_folder(tmp_path / "data", classes=2, per_class=2)
    result = runner.invoke(app, [a.format(tmp=tmp_path, data=data) for a in args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1


def test_pixels_baseline_also_drives_the_knn_probe(tmp_path):
    data = make_folder(tmp_path / "data", classes=3, per_class=6)  # classes differ by their dominant colour
    out = tmp_path / "knn.json"
    result = runner.invoke(app, ["probe", "knn", "pixels:2", "--train", str(data), "--val", str(data), "--k", "1",
                                 *FAST, "--json", str(out)])
    assert result.exit_code == 0, result.output
    scores = json.loads(out.read_text())
    assert scores["description"] == "2x2 pixel thumbnail (no learning)" and scores["top1"] == 100.0
