"""Where and in what precision a command runs: --device and --precision resolved for this machine."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from sslkit.errors import UsageError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass(frozen=True)
class Precision:
    """A resolved ``--precision``: what a command computes in, and why."""

    name: str  # bf16 | fp16 | fp32
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype; None: fp32, no autocast."""
        return DTYPES[self.name]

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return nullcontext()
        if device.type == "cpu" and self.dtype is torch.bfloat16:
            return _cpu_bf16_autocast()
        return torch.autocast(device.type, dtype=self.dtype)

    def record(self) -> dict[str, str]:
        """What a run writes into config.json (``decided``) and every checkpoint's metadata."""
        return {"precision": self.name, "precision_reason": self.reason}


def choose_precision(name: str, device: torch.device) -> Precision:
    """``--precision`` resolved for ``device``. auto: bf16 on GPUs that support it, else fp16 (with loss
    scaling); on a CPU bf16 where it has AMX, else fp32 (``cpu_auto_precision``). The decision depends on the
    hardware only, never on a timing, so it is the same on every call. Losses are computed in fp32 whatever
    the precision."""
    if name == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    if name != "auto":
        return Precision(name, "as asked")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "this GPU supports bf16")
        return Precision("fp16", "this GPU has no bf16; fp16 with loss scaling")
    return cpu_auto_precision(native_cpu_bf16())


def run_precision(asked: str, device: torch.device, saved: dict[str, str] | None) -> tuple[Precision, str | None]:
    """A training run's precision and the line that says why. A new run (``saved`` None) resolves ``asked``
    once; a resumed one keeps what its checkpoint's metadata ``saved`` recorded, unless another precision is
    asked for explicitly (used, with a notice that the numbers will differ)."""
    if saved is None or saved.get("precision") not in DTYPES:  # a new run, or a checkpoint without the record
        chosen = choose_precision(asked, device)
        return chosen, None if asked != "auto" else f"precision {chosen.name}: {chosen.reason}"
    recorded = Precision(saved["precision"], saved.get("precision_reason", ""))
    if asked in ("auto", recorded.name):
        if recorded.name == "fp16" and device.type != "cuda":
            raise UsageError("--resume: this run trained in fp16, which needs a GPU; resume it on one, or pass "
                             "--precision bf16 or fp32 to continue on the CPU in another precision")
        return recorded, f"precision {recorded.name}, as recorded when the run started ({recorded.reason})"
    chosen = choose_precision(asked, device)
    return (Precision(chosen.name, f"as asked on --resume; it ran in {recorded.name} before"),
            f"--precision {asked}: this run computed in {recorded.name} until now and continues in {asked}, "
            "so its numbers will differ from an uninterrupted run's")


def cpu_auto_precision(native: str | None) -> Precision:
    """``auto`` on a CPU whose native bf16 instructions are ``native`` (None: bf16 is emulated there).

    bf16 where the CPU has AMX matrix units: a training step runs 1.36x faster than in fp32 for BYOL ResNet-18,
    1.21x for DINO ViT-Tiny and 1.13x for MAE ViT-Tiny, at no measured cost in accuracy (docs/scaling.md).
    fp32 elsewhere: where bf16 is emulated (AVX2) it runs at a few percent of the fp32 speed, and AVX512-BF16
    without AMX has not been measured faster. --precision bf16 uses it anyway."""
    if native is None:
        return Precision("fp32", "this CPU has no native bf16 (it would be emulated, far slower than fp32)")
    if "AMX-BF16" in native:
        return Precision("bf16", f"bf16 is native and fast on this CPU ({native})")
    return Precision("fp32", f"bf16 is native on this CPU ({native}) but without AMX it is not known to be "
                             "faster; --precision bf16 uses it")


class _TrainedAttentionInFP32(TorchFunctionMode):
    """Attention that gradients flow through computed in fp32 under bf16 autocast on the CPU: PyTorch's fused
    CPU attention runs forward and backward 7x slower in bf16 than in fp32 for ViT-Tiny's 17-token sequences
    (a whole DINO step 1.3x slower), while its forward alone is faster in bf16."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and torch.is_grad_enabled() and len(args) >= 3:
            query, key, value = args[:3]
            if query.dtype is torch.bfloat16 and (query.requires_grad or key.requires_grad or value.requires_grad):
                mask = kwargs.get("attn_mask")
                if mask is not None and mask.is_floating_point():
                    kwargs = {**kwargs, "attn_mask": mask.float()}
                with torch.autocast("cpu", enabled=False):
                    out = func(query.float(), key.float(), value.float(), *args[3:], **kwargs)
                return out.to(torch.bfloat16)
        return func(*args, **kwargs)


@contextmanager
def _cpu_bf16_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16), _TrainedAttentionInFP32():
        yield


def native_cpu_bf16() -> str | None:
    """The instructions this CPU has for bf16 matrix products, from PyTorch's CPUID checks (``AMX-BF16``,
    ``AVX512-BF16``, or both), or None where bf16 would be emulated."""
    found = [name for name, flag in (("AMX-BF16", "amx_bf16"), ("AVX512-BF16", "avx512_bf16")) if _cpu_has(flag)]
    return ", ".join(found) or None


def cpu_description() -> str:
    """One line naming this CPU's kind for logs and CI: PyTorch's kernel level and its native bf16."""
    return (f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {native_cpu_bf16() or 'none'}, "
            f"torch {torch.__version__}")


def _cpu_has(flag: str) -> bool:
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # newer PyTorch; older ones have the two checks
    if capabilities is not None:
        return bool(capabilities().get(flag, False))
    older = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}[flag]
    return bool(getattr(torch.cpu, older, lambda: False)())

