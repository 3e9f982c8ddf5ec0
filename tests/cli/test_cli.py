import json
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from sslkit.cli import app, dashed
from tests.conftest import make_folder

runner = CliRunner()
TINY = ["--arch", "test_resnet", "--img-size", "32", "--batch-size", "8", "--workers", "0",
        "--projector-hidden-dim", "64", "--projector-dim", "32", "--predictor-hidden-dim", "64"]


def sslkit(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sslkit", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_help_lists_the_commands_and_every_command_shows_examples():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert all(name in result.output
               for name in ("pretrain", "probe", "finetune", "attention", "reconstruct", "copydetect", "export",
                            "info"))
    for command in (["pretrain", "byol"], ["pretrain", "dino"], ["pretrain", "mae"], ["probe", "knn"],
                    ["probe", "linear"], ["finetune"], ["attention"], ["reconstruct"], ["export"], ["info"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0 and "Examples" in result.output and "sslkit " + " ".join(command) in result.output


def test_pretrain_then_probe_knn_end_to_end(tmp_path):
    data = make_folder(tmp_path / "data", classes=2, per_class=12)
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "byol", str(data), "--out", str(run), "--epochs", "1", *TINY])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["byol"]["arch"] == "test_resnet" and config["train"]["optimizer"] == "lars"
    assert (run / "checkpoints" / "last.safetensors").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["epoch"] == 1 and records[-1]["step"] == 3

    out = tmp_path / "knn.json"
    result = runner.invoke(app, ["probe", "knn", str(run), "--train", str(data), "--val", str(data),
                                 "--k", "1", "--k", "5", "--workers", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "top-1" in result.output
    scores = json.loads(out.read_text())
    assert set(scores["k"]) == {"1", "5"} and scores["num_train"] == 24 and scores["img_size"] == 32
    assert scores["k"]["1"]["top1"] == 100.0  # every val image is its own nearest neighbour
    assert scores["top1"] == scores["k"]["1"]["top1"]


def test_probe_knn_of_random_init_baseline_is_quiet_and_reproducible(tmp_path):
    data = make_folder(tmp_path / "data", classes=3, per_class=8)
    scores = []
    for seed in ("7", "7"):
        out = tmp_path / f"knn{len(scores)}.json"
        result = runner.invoke(app, ["probe", "knn", "timm:test_resnet", "--train", str(data), "--val", str(data),
                                     "--img-size", "32", "--workers", "0", "--quiet", "--json", str(out), "--seed",
                                     seed, "--k", "3"])
        assert result.exit_code == 0 and result.output == ""
        scores.append(json.loads(out.read_text()))
    assert scores[0]["description"] == "test_resnet, random init" and scores[0]["num_classes"] == 3
    assert 0 <= scores[0]["top1"] <= scores[0]["top5"] <= 100
    assert scores[0] == scores[1]


def test_dino_pretrain_then_knn_and_attention_maps_end_to_end(tmp_path):
    data = make_folder(tmp_path / "data", classes=2, per_class=12)
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "dino", str(data), "--out", str(run), "--epochs", "1", "--arch",
                                 "test_vit", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--out-dim",
                                 "32", "--local-crops-number", "2", "--norm-last-layer", "false"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())["dino"]
    assert config["out_dim"] == 32 and config["norm_last_layer"] is False and config["local_crops_number"] == 2
    assert "dino preset auto: out_dim 32, momentum_teacher 0.996, teacher_temp 0.02" in result.stderr
    result = runner.invoke(app, ["probe", "knn", str(run), "--train", str(data), "--val", str(data), "--k", "1",
                                 "--workers", "0"])
    assert result.exit_code == 0 and "dino test_vit (teacher), step 3" in result.output
    result = runner.invoke(app, ["attention", str(run), str(data / "class0"), "--out", str(tmp_path / "maps"),
                                 "--img-size", "32", "--threshold", "0.6", "--json", str(tmp_path / "maps.json")])
    assert result.exit_code == 0, result.output
    maps = json.loads((tmp_path / "maps.json").read_text())
    assert len(maps["images"]) == 12 and maps["patch_size"] == 16
    assert (tmp_path / "maps" / "c0_000" / "mask-th0.6-mean.png").is_file()


def test_mae_pretrain_then_reconstruct_knn_and_attention_end_to_end(tmp_path):
    data = make_folder(tmp_path / "data", classes=2, per_class=12)
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "mae", str(data), "--out", str(run), "--epochs", "1", "--arch", "test_vit",
                                 "--img-size", "32", "--batch-size", "8", "--workers", "0", "--decoder-dim", "32",
                                 "--decoder-depth", "1", "--decoder-heads", "2", "--no-norm-pix-loss"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["mae"]["norm_pix_loss"] is False and config["train"]["betas"] == [0.9, 0.95]
    result = runner.invoke(app, ["reconstruct", str(run), str(data / "class1"), "--out", str(tmp_path / "recon"),
                                 "--seed", "2", "--mask-ratio", "0.5", "--json", str(tmp_path / "recon.json")])
    assert result.exit_code == 0, result.output
    assert "mean masked-patch MSE" in result.output and "(against normalised pixels)" in result.output
    recon = json.loads((tmp_path / "recon.json").read_text())
    assert len(recon["images"]) == 12 and recon["images"][0]["masked_patches"] == 2 and recon["seed"] == 2
    assert (tmp_path / "recon" / "c1_000.png").is_file()
    result = runner.invoke(app, ["probe", "knn", str(run), "--train", str(data), "--val", str(data), "--k", "1",
                                 "--workers", "0"])
    assert result.exit_code == 0 and "mae test_vit (encoder), step 3" in result.output
    result = runner.invoke(app, ["attention", str(run), str(data / "class0" / "c0_000.png"), "--out",
                                 str(tmp_path / "maps"), "--img-size", "32"])
    assert result.exit_code == 0 and (tmp_path / "maps" / "c0_000" / "attn-mean.png").is_file()


def test_official_scripts_underscore_options_are_accepted():
    assert dashed(["dino", "my_photos/", "--out_dim", "1024", "--teacher_temp=0.04", "--out", "run_1"]) == \
        ["dino", "my_photos/", "--out-dim", "1024", "--teacher-temp=0.04", "--out", "run_1"]


@pytest.mark.parametrize("args, message", [
    (["pretrain", "byol", "{tmp}/nowhere", "--out", "{tmp}/run"], "error: folder not found"),
    (["pretrain", "byol", "{data}", "--out", "{tmp}/run", "--arch", "resnet1000"], "error: unknown architecture"),
    (["pretrain", "byol", "{data}", "--out", "{tmp}/run", "--optimizer", "adam"], "error: --optimizer must be one of"),
    (["pretrain", "byol", "{data}", "--out", "{tmp}/run", "--batch-size", "0"], "error: --batch-size must be positive"),
    (["probe", "knn", "{tmp}/missing.safetensors", "--train", "{data}", "--val", "{data}"], "error: model not found"),
    (["probe", "knn", "timm:test_resnet", "--train", "{tmp}/flat", "--val", "{data}"], "error: no class sub-folders"),
    (["pretrain", "dino", "{data}", "--out", "{tmp}/run", "--norm-last-layer", "maybe"],
     "error: --norm-last-layer takes true or false"),
    (["pretrain", "dino", "{data}", "--out", "{tmp}/run", "--local-crops-scale", "0.5", "0.1"],
     "error: --local-crops-scale must be"),
    (["pretrain", "dino", "{data}", "--out", "{tmp}/run", "--arch", "test_vit", "--img-size", "40"],
     "error: crop sizes 40 / 16 px"),
    (["attention", "timm:test_resnet", "{data}", "--out", "{tmp}/maps"],
     "error: timm:test_resnet is a test_resnet, not a vision"),
    (["attention", "timm:test_vit", "{tmp}/nothing.png", "--out", "{tmp}/maps"], "error: image not found"),
    (["attention", "timm:test_vit", "{data}", "--out", "{tmp}/maps", "--threshold", "60"],
     "error: --threshold must lie"),
    (["pretrain", "mae", "{data}", "--out", "{tmp}/run", "--mask-ratio", "1"], "error: --mask-ratio must lie strictly"),
    (["pretrain", "mae", "{data}", "--out", "{tmp}/run", "--arch", "test_resnet"], "error: MAE needs a plain ViT"),
    (["reconstruct", "timm:test_vit", "{data}", "--out", "{tmp}/recon"], "error: model not found: timm:test_vit"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    data = make_folder(tmp_path / "data", classes=2, per_class=2)
    make_folder(tmp_path / "flat", classes=1, per_class=2, labelled=False)
    result = runner.invoke(app, [a.format(tmp=tmp_path, data=data) for a in args])
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1


def test_an_empty_folder_exits_2_with_one_line_and_no_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    result = sslkit("pretrain", "byol", tmp_path / "empty", "--out", tmp_path / "run")
    assert result.returncode == 2
    assert result.stderr == f"error: no images in {tmp_path / 'empty'} (looked for " + \
        ".bmp, .gif, .jpeg, .jpg, .pbm, .pgm, .png, .ppm, .tif, .tiff, .webp)\n"
    assert not (tmp_path / "run").exists()


def test_ctrl_c_writes_a_checkpoint_and_exits_130(tmp_path):
    data = make_folder(tmp_path / "data", classes=2, per_class=40)
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "sslkit", "pretrain", "byol", str(data), "--out", str(run), "--epochs", "50",
         "--log-every", "1", *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "resume with --resume" in stderr and "Traceback" not in stderr
    result = sslkit("pretrain", "byol", data, "--out", run, "--resume", "--epochs", "1")
    assert result.returncode == 2 and "epochs=1 (run has 50)" in result.stderr


def test_probe_linear_and_finetune_from_the_command_line(tmp_path):
    train = make_folder(tmp_path / "train", classes=2, per_class=8)
    val = make_folder(tmp_path / "val", classes=2, per_class=4, seed=1)
    common = ["--train", str(train), "--val", str(val), "--img-size", "32", "--workers", "0", "--device", "cpu"]
    result = runner.invoke(app, ["probe", "linear", "timm:test_resnet", *common, "--epochs", "2", "--batch-size", "8",
                                 "--lr", "0.01", "--lr", "0.1", "--json", str(tmp_path / "linear.json")])
    assert result.exit_code == 0, result.output
    assert "last top-1 %" in result.output and "the head reported" in result.output
    linear = json.loads((tmp_path / "linear.json").read_text())
    assert [h["lr"] for h in linear["heads"]] == [0.01, 0.1] and linear["epochs"] == 2

    result = runner.invoke(app, ["finetune", "timm:test_resnet", *common, "--out", str(tmp_path / "ft"), "--epochs",
                                 "1", "--batch-size", "4", "--layer-decay", "1", "--json", str(tmp_path / "ft.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ft.json").read_text())["num_train"] == 16
    assert (tmp_path / "ft" / "checkpoints" / "best.safetensors").is_file()


def test_finetune_and_probe_linear_usage_errors_exit_2_with_one_line(tmp_path):
    train = make_folder(tmp_path / "train", classes=2, per_class=4)
    common = ["--train", str(train), "--val", str(train), "--img-size", "32", "--workers", "0"]
    for args in (["finetune", "timm:test_resnet", *common, "--out", str(tmp_path / "a"), "--fraction", "1.5"],
                 ["finetune", "timm:test_resnet", *common, "--out", str(tmp_path / "b"), "--batch-size", "3",
                  "--recipe", "mae"],
                 ["finetune", "timm:test_resnet", *common, "--out", str(tmp_path / "c"), "--recipe", "simclr"],
                 ["probe", "knn", "timm:test_resnet", *common, "--fraction", "0"],
                 ["probe", "linear", "timm:test_resnet", *common, "--recipe", "byol"],
                 ["probe", "linear", "timm:test_resnet", *common, "--pool", "token"]):
        result = sslkit(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
