"""Where and in what precision a command runs: --device and --precision resolved for this machine."""

from __future__ import annotations

import functools
import time

import torch

from sslkit.errors import UsageError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_precision(name: str, device: torch.device) -> tuple[str, torch.dtype | None]:
    """The autocast precision ``name`` stands for on ``device``, and its dtype (None: fp32, no autocast)."""
    name = choose_precision(name, device)[0]
    return name, DTYPES[name]


def choose_precision(name: str, device: torch.device) -> tuple[str, str]:
    """``--precision`` resolved, and why. auto: bf16 on GPUs that support it, else fp16 (with loss scaling);
    on the CPU bf16 where this CPU multiplies bf16 matrices natively (clearly faster than fp32), else fp32.
    Losses are computed in fp32 whatever the precision."""
    if name == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    if name != "auto":
        return name, "as asked"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "this GPU supports bf16"
        return "fp16", "this GPU has no bf16; fp16 with loss scaling"
    speedup = cpu_bf16_speedup()
    if speedup >= 1.5:
        return "bf16", f"bf16 matrix products run {speedup:.1f}x faster than fp32 on this CPU"
    return "fp32", f"this CPU has no fast bf16 (its matrix products run at {speedup:.2g}x the fp32 speed)"


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """fp32 time / bf16 time of a 256 x 256 matrix product on this CPU: about 4 where bf16 is native (AMX,
    AVX512-BF16), far below 1 where it is emulated. A probe, not CPU flags, which virtual machines hide."""
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(256, 256).to(dtype), torch.randn(256, 256).to(dtype)
        a @ b
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        times[dtype] = time.perf_counter() - start
    return times[torch.float32] / max(times[torch.bfloat16], 1e-9)


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch
