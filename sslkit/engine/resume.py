"""The training state a checkpoint carries for ``--resume``, and putting it back.

Tensors: ``model.<name>`` for every module's state, ``optim.*`` / ``scaler.*`` / ``rng.*`` for the optimizer,
the loss scaler and the random generators; their non-tensor parts travel as one JSON skeleton (the
``state`` metadata string). The counters (step, epoch) and the run's record are the trainer's metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sslkit.engine import checkpoint as ckpt
from sslkit.engine.rng import rng_state, set_rng_state


def pack_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors to save and the ``state`` metadata string that describes the rest."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    state = {
        "optim": ckpt.pack(optimizer.state_dict(), "optim", tensors),
        "scaler": ckpt.pack(scaler.state_dict(), "scaler", tensors),
        "rng": ckpt.pack(rng_state(), "rng", tensors),
    }
    return tensors, ckpt.dumps(state)


def restore_state(path: Path, metadata: dict[str, str], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler) -> None:
    """Load what ``pack_state`` saved into ``path`` (whose metadata is ``metadata``): weights (strictly),
    optimizer, scaler and random generators."""
    tensors = ckpt.read_tensors(path)
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(weights, strict=True)
    state = json.loads(metadata["state"])
    optimizer.load_state_dict(ckpt.unpack(state["optim"], tensors))
    scaler.load_state_dict(ckpt.unpack(state["scaler"], tensors))
    set_rng_state(ckpt.unpack(state["rng"], tensors))
