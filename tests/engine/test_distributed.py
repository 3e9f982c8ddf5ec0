"""torchrun on the CPU (gloo, 2 processes): a step at 2 x B/2 is the step one process takes at B, and the run
writes one checkpoint and one metrics log, as a single process does."""

import json
import os
import subprocess
import sys

import torch

from sslkit.engine import checkpoint as ckpt
from sslkit.engine.distributed import context, interleave
from tests.conftest import make_folder

# DINO on a tiny ViT without drop path: no BatchNorm (SyncBatchNorm needs CUDA) and no per-process randomness,
# so the two runs must agree up to float rounding; SGD so that the update is the gradient itself.
SETTINGS = ["--arch", "test_vit", "--img-size", "32", "--out-dim", "64", "--local-crops-number", "2",
            "--drop-path-rate", "0", "--batch-size", "8", "--epochs", "1", "--optimizer", "sgd", "--momentum", "0",
            "--lr", "0.5", "--warmup-epochs", "0", "--log-every", "1", "--workers", "0", "--device", "cpu",
            "--precision", "fp32"]


def run(command: list[str], cwd, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update({"OMP_NUM_THREADS": "1", **(extra_env or {})})
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_processes_at_half_the_batch_take_the_step_one_process_takes(tmp_path):
    images = make_folder(tmp_path / "images", classes=1, per_class=16, size=40, labelled=False)
    # online k-NN: 2 x 5 memory and 2 x 3 query images, odd counts so that the two processes' shares differ
    memory = make_folder(tmp_path / "memory", per_class=5, seed=1)
    queries = make_folder(tmp_path / "queries", per_class=3, seed=2)
    settings = [*SETTINGS, "--eval-train", str(memory), "--eval-val", str(queries), "--eval-k", "3"]
    run([sys.executable, "-m", "sslkit", "pretrain", "dino", str(images), "--out", str(tmp_path / "one"), *settings],
        tmp_path)
    result = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                  "-m", "sslkit", "pretrain", "dino", str(images), "--out", str(tmp_path / "two"), *settings], tmp_path)
    assert "= 2 processes x 4" in result.stderr  # said once: the second process is quiet
    assert result.stderr.count("steps/epoch") == 1
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 2, 2]  # one log, not one per process
    assert one[-1]["knn_top1"] == two[-1]["knn_top1"] and one[-1]["knn_top5"] == two[-1]["knn_top5"]
    for a, b in zip(one, two):
        for key in ("loss", "teacher_entropy", "kl", "epoch_loss"):
            if key in a:
                assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (key, a[key], b[key])
    files = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())
    assert files == ["last.safetensors"]
    single = ckpt.read_tensors(tmp_path / "one" / "checkpoints" / "last.safetensors", "model.")
    double = ckpt.read_tensors(tmp_path / "two" / "checkpoints" / "last.safetensors", "model.")
    assert set(single) == set(double)
    for name, value in single.items():
        assert torch.allclose(value, double[name], rtol=1e-4, atol=1e-6), name
    assert ckpt.read_metadata(tmp_path / "two" / "checkpoints" / "last.safetensors")["step"] == "2"


def test_shares_gathered_from_the_processes_are_the_items_in_order():
    items = torch.arange(7.0)
    parts = [torch.cat([items[rank::3], torch.zeros(3 - len(items[rank::3]))]) for rank in range(3)]  # padded
    assert torch.equal(interleave(parts, 7), items)


def test_without_torchrun_there_is_no_process_group():
    assert not torch.distributed.is_initialized()
    assert context().world_size == 1 and context().is_main


def test_two_processes_on_the_store_see_the_batches_one_process_sees(tmp_path):
    """The store is built once (the second process waits for the first's cache file) and each process makes
    the views of its share of every batch from the samples' seeds: the same views one process makes."""
    images = make_folder(tmp_path / "images", classes=1, per_class=16, size=40, labelled=False)
    settings = [*SETTINGS, "--data-path", "store"]
    env = {"SSLKIT_STORE_DIR": str(tmp_path / "stores")}
    run([sys.executable, "-m", "sslkit", "pretrain", "dino", str(images), "--out", str(tmp_path / "one"), *settings],
        tmp_path, env)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "sslkit",
         "pretrain", "dino", str(images), "--out", str(tmp_path / "two"), *settings], tmp_path, env)
    assert len(list((tmp_path / "stores").glob("*.npy"))) == 1
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two] == [r["step"] for r in one]
    for a, b in zip(one, two):
        if "loss" in a:
            assert abs(a["loss"] - b["loss"]) <= 1e-5 * max(1.0, abs(a["loss"]))
    single = ckpt.read_tensors(tmp_path / "one" / "checkpoints" / "last.safetensors", "model.")
    double = ckpt.read_tensors(tmp_path / "two" / "checkpoints" / "last.safetensors", "model.")
    for name, value in single.items():
        assert torch.allclose(value, double[name], rtol=1e-4, atol=1e-6), name
    decided = json.loads((tmp_path / "two" / "config.json").read_text())["decided"]
    assert decided["data_path"] == "store"
