"""Task-identity inference head: residual MLP + LayerNorm + linear classifier over all classes."""

from __future__ import annotations

import torch
from torch import nn

from norga.models.vit import init_linear


class ResidualMLP(nn.Module):
    """``LayerNorm(x + MLP(x))`` with hidden widths ``dim * m`` for ``m`` in ``structure``.

    With ``[2]``: Linear(d, 2d) -> GELU -> Dropout -> Linear(2d, d) -> Dropout. A middle layer (neither first
    nor last, at index ``len(structure) // 2``) is Linear -> Dropout -> LayerNorm instead, as in the
    reference (``[4, 4]``: Linear(4d, 4d) -> Dropout -> LayerNorm(4d)).
    """

    def __init__(self, dim: int, structure: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        if not structure:
            raise ValueError("mlp structure must list at least one hidden width multiplier, e.g. [2]")
        widths = [dim] + [dim * m for m in structure] + [dim]
        layers = []
        last = len(structure)
        for i in range(last + 1):
            linear = nn.Linear(widths[i], widths[i + 1])
            if i == last:
                layers.append(nn.Sequential(linear, nn.Dropout(dropout)))
            elif i == last // 2 and i != 0:
                layers.append(nn.Sequential(linear, nn.Dropout(dropout), nn.LayerNorm(widths[i + 1])))
            else:
                layers.append(nn.Sequential(linear, nn.GELU(), nn.Dropout(dropout)))
        self.net = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.net(x))


class TIIHead(nn.Module):
    """Maps the frozen backbone's class-token feature to logits over all classes."""

    def __init__(self, dim: int, num_classes: int, structure: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = ResidualMLP(dim, structure, dropout)
        self.head = nn.Linear(dim, num_classes)
        init_linear(self)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(features))
