import json

from PIL import Image

from sslkit.visualize.curves import panels, write_curves


def windows(n: int = 30) -> list[dict]:
    return [{"step": 10 * i, "epoch": i // 10, "loss": 5.0 - 0.1 * i, "lr": 1e-3 * i / n, "img_per_s": 120.0}
            for i in range(1, n + 1)]


def epochs() -> list[dict]:
    return [{"epoch": e, "step": 100 * e, "epoch_loss": 5.0 - e, "img_per_s": 110.0} for e in (1, 2, 3)]


def knn() -> list[dict]:
    return [{"epoch": e, "step": 100 * e, "knn_top1": 10.0 * e, "knn_top5": 30.0 * e} for e in (1, 2, 3)]


def log(run_dir, records: list[dict], extra_lines: tuple[str, ...] = ()) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_curves_have_an_accuracy_panel_when_knn_was_logged(tmp_path):
    run = tmp_path / "dino_run"
    log(run, windows() + epochs() + knn(), extra_lines=("", "not json {", "[1, 2]"))
    path = write_curves(run)
    assert path == run / "curves.png" and path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (1260, 320)  # three 4.2 x 3.2 in panels at 100 dpi


def test_without_top1_keys_the_picture_has_only_loss_and_lr_panels(tmp_path):
    run = tmp_path / "run"
    log(run, windows() + epochs())
    with Image.open(write_curves(run)) as image:
        assert image.size == (840, 320)


def test_accuracy_lines_are_every_top1_key_against_epoch_and_loss_lines_against_step():
    records = windows(3) + epochs() + [
        {"epoch": 3, "step": 30, "val_top1": 55.0, "val_top5": 90.1, "val_loss": 1.2},
        {"epoch": 3, "step": 30, "val_top1/lr=0.01": 50.0, "val_top1/lr=0.1": 52.5},
    ]
    chosen = {panel["title"]: panel for panel in panels(records)}
    assert list(chosen) == ["loss", "learning rate", "accuracy (%)"]
    assert chosen["accuracy (%)"]["xlabel"] == "epoch" and chosen["loss"]["xlabel"] == "step"
    accuracy = {label: (xs, ys) for label, xs, ys, _ in chosen["accuracy (%)"]["lines"]}
    assert accuracy == {"val_top1": ([3.0], [55.0]), "val_top1/lr=0.01": ([3.0], [50.0]),
                        "val_top1/lr=0.1": ([3.0], [52.5])}
    loss = {label: (xs, ys) for label, xs, ys, _ in chosen["loss"]["lines"]}
    assert loss["epoch mean"] == ([100.0, 200.0, 300.0], [4.0, 3.0, 2.0])
    assert loss["per log window"][0] == [10.0, 20.0, 30.0]


def test_missing_log_returns_none_and_writes_nothing(tmp_path):
    assert write_curves(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_log_of_blank_and_garbage_lines_returns_none(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n\n{broken\nnot json\n   \n")
    assert write_curves(tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_no_temporary_file_is_left_behind_and_out_can_be_elsewhere(tmp_path):
    run = tmp_path / "run"
    log(run, windows() + knn())
    elsewhere = tmp_path / "pictures" / "c.png"
    elsewhere.parent.mkdir()
    assert write_curves(run, elsewhere) == elsewhere and elsewhere.is_file()
    assert write_curves(run) == run / "curves.png"
    leftovers = [p.name for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert leftovers == []
    assert sorted(p.name for p in run.iterdir()) == ["curves.png", "metrics.jsonl"]
