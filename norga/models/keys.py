"""Prompt keys: the key-query matching of L2P, DualPrompt and S-Prompt++ (docs/algorithm.md#baselines).

Each prompt of a pool has a learnable key; a sample's query is the frozen backbone's class token. Matching is
the cosine similarity between query and keys, and a sample takes its ``top_k`` best keys. The pull term moves
the selected keys towards the queries that chose them.
"""

from __future__ import annotations

import torch
from torch import nn


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    # x / sqrt(max(sum x^2, 1e-12)), as the reference normalises keys and queries
    return x * torch.rsqrt(torch.clamp((x * x).sum(dim=-1, keepdim=True), min=1e-12))


class PromptKeys(nn.Module):
    """``pool_size`` keys of dimension ``dim``, initialised uniform(-1, 1)."""

    def __init__(self, pool_size: int, dim: int) -> None:
        super().__init__()
        self.vectors = nn.Parameter(torch.empty(pool_size, dim).uniform_(-1.0, 1.0))

    @property
    def pool_size(self) -> int:
        return self.vectors.shape[0]

    def similarity(self, query: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``(B, pool)`` between queries ``(B, dim)`` and every key."""
        return _l2_normalize(query.float()) @ _l2_normalize(self.vectors).T

    @torch.no_grad()
    def match(self, query: torch.Tensor, top_k: int, allowed: int | None = None,
              ordered: bool = False) -> torch.Tensor:
        """Each sample's ``top_k`` best keys, ``(B, top_k)`` sorted ascending, or with ``ordered`` best first (the
        reference's ``topk`` order, which its prefix layout depends on); only keys ``0..allowed-1`` when
        ``allowed`` is given."""
        sim = self.similarity(query)
        if allowed is not None:
            sim[:, allowed:] = float("-inf")
        ids = sim.topk(top_k, dim=1).indices
        return ids if ordered else ids.sort(dim=1).values

    def pull(self, query: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Per sample, the summed cosine between the query and its selected keys ``ids (B, k)``: ``(B,)``.
        Gradients reach the keys only (the query is the frozen backbone's)."""
        keys = _l2_normalize(self.vectors)[ids]  # (B, k, dim)
        return (keys * _l2_normalize(query.detach().float()).unsqueeze(1)).sum(dim=(1, 2))
