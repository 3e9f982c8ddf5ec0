"""--precision: decided from what the hardware can do (never from a timing), once per run, recorded in the
run, and kept by --resume."""

import json
import random
import time

import pytest
import torch

import sslkit
from sslkit.engine import checkpoint as ckpt, device
from sslkit.engine.device import Precision, choose_precision, cpu_auto_precision, native_cpu_bf16
from sslkit.engine.modelinfo import model_info
from sslkit.errors import Interrupted, UsageError
from sslkit.methods.byol import BYOL
from tests.conftest import TINY_BYOL, interrupt_at

CPU = torch.device("cpu")


@pytest.mark.parametrize("native, chosen", [(None, "fp32"), ("AVX512-BF16", "fp32"), ("AMX-BF16, AVX512-BF16", "bf16")])
def test_auto_on_the_cpu_resolves_the_same_on_every_call_for_a_cpu_kind_however_busy(monkeypatch, native, chosen):
    monkeypatch.setattr(device, "native_cpu_bf16", lambda: native)
    first = choose_precision("auto", CPU)
    with monkeypatch.context() as busy:  # a loaded machine: any timing the decision read would be noise
        clock = random.Random(0)
        busy.setattr(time, "perf_counter", lambda: clock.uniform(0, 1e6))
        busy.setattr(time, "monotonic", lambda: clock.uniform(0, 1e6))
        decisions = [choose_precision("auto", CPU) for _ in range(20)]
    assert decisions == [first] * 20
    assert first.name == chosen and first.dtype is {"fp32": None, "bf16": torch.bfloat16}[chosen]
    assert (native or "no native bf16") in first.reason


def test_cpu_bf16_autocast_computes_attention_that_is_trained_in_fp32_and_the_rest_in_bf16():
    """PyTorch's fused CPU attention is several times slower backward in bf16 than in fp32: under the CPU's bf16
    autocast, attention with gradients takes fp32 (the result rounded to bf16); without gradients, bf16."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 16)
    x = torch.randn(2, 3, 5, 16)
    with Precision("bf16", "as asked").autocast(CPU):
        q = linear(x)
        trained = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        with torch.no_grad():
            frozen = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert q.dtype is trained.dtype is frozen.dtype is torch.bfloat16
    in_fp32 = torch.nn.functional.scaled_dot_product_attention(*[q.detach().float()] * 3)
    in_bf16 = torch.nn.functional.scaled_dot_product_attention(*[q.detach()] * 3)
    assert torch.equal(trained.detach(), in_fp32.to(torch.bfloat16))
    assert torch.equal(frozen, in_bf16) and not torch.equal(in_fp32.to(torch.bfloat16), in_bf16)
    trained.float().sum().backward()
    expected = torch.nn.Linear(16, 16)
    expected.load_state_dict(linear.state_dict())
    linear_grad = linear.weight.grad.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = expected(x)
    out = torch.nn.functional.scaled_dot_product_attention(q.float(), q.float(), q.float()).to(torch.bfloat16)
    out.float().sum().backward()
    assert torch.equal(linear_grad, expected.weight.grad)


def test_native_bf16_is_read_from_pytorchs_cpu_checks(monkeypatch):
    capabilities = {"avx2": True, "amx_bf16": True, "avx512_bf16": True}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities, raising=False)
    assert native_cpu_bf16() == "AMX-BF16, AVX512-BF16"
    capabilities["amx_bf16"] = False
    assert native_cpu_bf16() == "AVX512-BF16"
    capabilities["avx512_bf16"] = False
    assert native_cpu_bf16() is None
    monkeypatch.delattr(torch.cpu, "get_capabilities")  # older PyTorch: only its two checks
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert native_cpu_bf16() == "AMX-BF16"


def test_an_explicit_precision_is_taken_as_asked_and_fp16_needs_a_gpu():
    assert choose_precision("bf16", CPU) == Precision("bf16", "as asked")
    assert choose_precision("bf16", CPU).dtype is torch.bfloat16
    assert choose_precision("fp32", CPU).dtype is None
    with pytest.raises(UsageError, match="--precision fp16 needs a GPU"):
        choose_precision("fp16", CPU)


def bf16_where_native(native):
    """A CPU rule that takes bf16 wherever it is native, to show that a resumed run keeps its recorded choice."""
    return Precision("bf16", f"native bf16 ({native})") if native else cpu_auto_precision(None)


def losses(run) -> list:
    return [json.loads(line).get("loss") for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run) -> dict:
    return ckpt.read_tensors(run / "checkpoints" / "last.safetensors", "model.")


def test_a_run_records_its_precision_and_resumes_in_it_on_another_cpu_kind(monkeypatch, image_folder, tmp_path,
                                                                          capsys):
    """auto chose bf16 when the run started (native bf16 for the whole first half); the resumed half sees a CPU
    without it, still computes in bf16, and ends bit for bit where the uninterrupted run ends."""
    settings = dict(TINY_BYOL, precision="auto", epochs=2, log_every=1)
    monkeypatch.setattr(device, "cpu_auto_precision", bf16_where_native)
    monkeypatch.setattr(device, "native_cpu_bf16", lambda: "AMX-BF16")
    sslkit.pretrain("byol", image_folder, tmp_path / "straight", **settings)
    with interrupt_at(BYOL, step=1), pytest.raises(Interrupted):
        sslkit.pretrain("byol", image_folder, tmp_path / "resumed", **settings)
    first_half = capsys.readouterr().err
    monkeypatch.setattr(device, "native_cpu_bf16", lambda: None)
    sslkit.pretrain("byol", image_folder, tmp_path / "resumed", resume=True)
    second_half = capsys.readouterr().err
    sslkit.pretrain("byol", image_folder, tmp_path / "fp32", **settings)  # what deciding again would give

    assert "precision bf16: native bf16 (AMX-BF16)" in first_half
    assert "precision bf16, as recorded when the run started (native bf16 (AMX-BF16))" in second_half
    config = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert config["train"]["precision"] == "auto"
    assert config["decided"]["precision"] == "bf16"
    assert config["decided"]["precision_reason"] == "native bf16 (AMX-BF16)"
    metadata = ckpt.read_metadata(tmp_path / "resumed" / "checkpoints" / "last.safetensors")
    assert metadata["precision"] == "bf16" and json.loads(metadata["config"])["decided"]["precision"] == "bf16"
    assert model_info(str(tmp_path / "resumed"))["precision"] == "bf16"
    assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")
    straight, resumed, fp32 = weights(tmp_path / "straight"), weights(tmp_path / "resumed"), weights(tmp_path / "fp32")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert not all(torch.equal(straight[k], fp32[k]) for k in straight)


def test_another_explicit_precision_on_resume_is_used_with_a_notice_and_recorded(image_folder, tmp_path, capsys):
    settings = dict(TINY_BYOL, precision="auto", epochs=2)
    with interrupt_at(BYOL, step=1), pytest.raises(Interrupted):
        sslkit.pretrain("byol", image_folder, tmp_path / "run", **settings)
    capsys.readouterr()
    sslkit.pretrain("byol", image_folder, tmp_path / "run", resume=True, precision="bf16")
    assert ("--precision bf16: this run computed in fp32 until now and continues in bf16, so its numbers will "
            "differ from an uninterrupted run's") in capsys.readouterr().err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["decided"]["precision"] == "bf16" and config["train"]["precision"] == "bf16"


def test_a_runs_config_repeats_its_settings_not_its_decision(image_folder, tmp_path):
    """--config RUN/config.json starts a new run that decides its precision afresh: the record is not a setting."""
    sslkit.pretrain("byol", image_folder, tmp_path / "a", **dict(TINY_BYOL, precision="auto", epochs=1))
    sslkit.pretrain("byol", image_folder, tmp_path / "b", config=tmp_path / "a" / "config.json")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["train"]["precision"] == "auto" and config["decided"]["precision"] == "fp32"
