"""Heads shared by methods."""

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
