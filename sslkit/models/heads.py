"""Projection heads: BYOL's MLP and DINO's head."""

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Sequential):
    """BYOL's projector / predictor: Linear - BatchNorm - ReLU - Linear."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class WeightNormLinear(nn.Module):
    """A bias-free linear layer with weight normalisation: ``W = g * v / |v|`` row by row.

    The parameters keep the names of ``torch.nn.utils.weight_norm`` (``weight_g``, ``weight_v``), as in DINO's
    checkpoints. With ``fix_gain`` the gain g stays at 1 (DINO's ``norm_last_layer``).
    """

    def __init__(self, in_dim: int, out_dim: int, fix_gain: bool):
        super().__init__()
        self.weight_v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fix_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_g * self.weight_v / torch.linalg.vector_norm(self.weight_v, dim=1, keepdim=True)
        return F.linear(x, weight)


class DINOHead(nn.Module):
    """DINO's projection head: 3-layer MLP (GELU) to a bottleneck, L2-normalised, then a weight-normalised
    linear layer to ``out_dim`` prototypes."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 norm_last_layer: bool = True):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_gain=norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))
