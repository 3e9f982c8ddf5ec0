"""Where and in what precision a command runs: --device and --precision resolved for this machine."""

from __future__ import annotations

import torch

from sslkit.errors import UsageError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> tuple[str, torch.dtype | None]:
    """auto: bf16 on GPUs that support it, else fp16 on GPUs; fp32 on the CPU."""
    if name == "auto":
        if device.type != "cuda":
            name = "fp32"
        else:
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return name, {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[name]


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch
