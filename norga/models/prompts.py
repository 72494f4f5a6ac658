"""Task prompts for prefix tuning and the gate parameters they share.

Prompts are stored as ``(layers, 2 [key, value], tasks, length, heads, head_dim)`` and initialised
uniform(-1, 1); the gate parameters as ``(layers, 2, 1, 1)`` with index 0 = tau and 1 = alpha, initialised
to 1 (docs/algorithm.md#prompts-shape-initialisation-copy-and-momentum). Turning prompt ids into per-layer
:class:`Prefix` objects is where the reference code's batch-mixing defect lives, so both layouts are implemented
here side by side.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from norga.models.attention import Prefix
from norga.models.gates import get_gate

PrefixLayout = Literal["per_sample", "reference"]


class PromptPool(nn.Module):
    """One prefix prompt per task in each of ``layers`` (block indices) of the backbone.

    Args:
        layers: indices of the prompted blocks (``e_prompt_layer_idx``).
        num_tasks: pool size, one prompt per task.
        length: prefix length L.
        num_heads, head_dim: the backbone's attention geometry.
        gate: NoRGa gate activation name, or None for plain prefix tuning (HiDe-Prompt).
        layout: ``per_sample`` (correct: each sample its own key and value prefix) or ``reference``
            (reproduces the reference code's reshape without axis move, which mixes the key/value
            prefixes of different samples of a batch; only for reproducing published numbers).
    """

    def __init__(
        self,
        layers: list[int],
        num_tasks: int,
        length: int,
        num_heads: int,
        head_dim: int,
        gate: str | None = None,
        layout: PrefixLayout = "per_sample",
    ) -> None:
        super().__init__()
        if layout not in ("per_sample", "reference"):
            raise ValueError(f"prefix layout must be 'per_sample' or 'reference', got {layout!r}")
        self.layers = list(layers)
        self.layout = layout
        self.gate_name = gate
        self.gate_fn = get_gate(gate) if gate is not None else None
        shape = (len(self.layers), 2, num_tasks, length, num_heads, head_dim)
        self.prompts = nn.Parameter(torch.empty(shape).uniform_(-1.0, 1.0))
        self.gate_params = nn.Parameter(torch.ones(len(self.layers), 2, 1, 1)) if gate is not None else None

    @property
    def num_tasks(self) -> int:
        return self.prompts.shape[2]

    def task_prompt(self, task: int, momentum: float = 0.0) -> torch.Tensor:
        """Prompt ``task`` mixed with the (detached) mean of earlier prompts: ``(layers, 2, L, H, D)``."""
        p = self.prompts[:, :, task]
        if momentum > 0 and task > 0:
            p = (1 - momentum) * p + momentum * self.prompts[:, :, :task].detach().mean(dim=2)
        return p

    @torch.no_grad()
    def copy_prompt(self, src: int, dst: int) -> None:
        """Initialise prompt ``dst`` from prompt ``src`` (done before training task ``dst``)."""
        self.prompts[:, :, dst] = self.prompts[:, :, src]

    @torch.no_grad()
    def commit_momentum(self, task: int, momentum: float) -> None:
        """Replace the stored prompt ``task`` by the momentum mix used while training it."""
        if momentum > 0 and task > 0:
            self.prompts[:, :, task] = self.task_prompt(task, momentum)

    def prefixes_for_task(self, task: int, batch_size: int, momentum: float = 0.0) -> dict[int, Prefix]:
        """Prefixes for a batch that uses prompt ``task`` for every sample (training, statistics)."""
        p = self.task_prompt(task, momentum)
        return self._to_prefixes(p.unsqueeze(2).expand(-1, -1, batch_size, -1, -1, -1))

    def prefixes_for_ids(self, prompt_ids: torch.Tensor) -> dict[int, Prefix]:
        """Prefixes for a batch whose sample ``b`` uses prompt ``prompt_ids[b]`` (evaluation), or the prompts
        ``prompt_ids[b, 0..k-1]`` one after the other (a top-k selection: prefix length ``k * L``)."""
        if prompt_ids.dim() == 2:
            selected = self.prompts[:, :, prompt_ids]  # (layers, 2, B, k, L, H, D)
            n_layers, _, b, k, length, h, d = selected.shape
            return self._to_prefixes(selected.reshape(n_layers, 2, b, k * length, h, d))
        return self._to_prefixes(self.prompts[:, :, prompt_ids])

    def _to_prefixes(self, selected: torch.Tensor) -> dict[int, Prefix]:
        # selected: (layers, 2, B, L, H, D)
        n_layers, _, b, length, h, d = selected.shape
        if self.layout == "per_sample":
            per_sample = selected.permute(0, 2, 1, 3, 4, 5)
        else:
            # The reference reshapes (layers, 2, B, ...) to (layers, B, 2, ...) without moving the axis
            # (with top-k, (layers, 2, B, k, L, ...) to (layers, B, 2, k L, ...): the same memory order).
            per_sample = selected.reshape(n_layers, b, 2, length, h, d)
        prefixes = {}
        for i, layer in enumerate(self.layers):
            kv = per_sample[i].transpose(2, 3)  # (B, 2, H, L, D)
            prefix = Prefix(key=kv[:, 0], value=kv[:, 1])
            if self.gate_fn is not None:
                prefix.gate = self.gate_fn
                prefix.tau = self.gate_params[i, 0]
                prefix.alpha = self.gate_params[i, 1]
            prefixes[layer] = prefix
        return prefixes


class SharedPrefix(nn.Module):
    """Prefix prompts shared by every task and sample (DualPrompt's G-prompt): ``(layers, 2, L, H, D)``,
    initialised uniform(-1, 1). Every sample gets the layer's own key and value halves (the reference gathers
    these correctly: no batch mixing)."""

    def __init__(self, layers: list[int], length: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.layers = list(layers)
        self.prompts = nn.Parameter(torch.empty(len(self.layers), 2, length, num_heads, head_dim).uniform_(-1, 1))

    def prefixes(self, batch_size: int) -> dict[int, Prefix]:
        out = {}
        for i, layer in enumerate(self.layers):
            kv = self.prompts[i].transpose(1, 2).unsqueeze(1).expand(-1, batch_size, -1, -1, -1)  # (2, B, H, L, D)
            out[layer] = Prefix(key=kv[0], value=kv[1])
        return out


class TokenPromptPool(nn.Module):
    """A pool of prompt-tuning prompts (L2P): ``(layers, pool, L, dim)`` initialised uniform(-1, 1). The
    prompts a sample selects are put in front of its token sequence before each of ``layers``."""

    def __init__(self, layers: list[int], pool_size: int, length: int, dim: int) -> None:
        super().__init__()
        self.layers = list(layers)
        self.prompts = nn.Parameter(torch.empty(len(self.layers), pool_size, length, dim).uniform_(-1, 1))

    @property
    def pool_size(self) -> int:
        return self.prompts.shape[1]

    def tokens_for_ids(self, ids: torch.Tensor) -> dict[int, torch.Tensor]:
        """Tokens for a batch whose sample ``b`` selects prompts ``ids[b, 0..k-1]``: ``(B, k L, dim)`` per
        layer, the selected prompts one after the other."""
        b, k = ids.shape
        selected = self.prompts[:, ids]  # (layers, B, k, L, dim)
        # explicit sizes: a data-parallel rank's shard may be empty (b = 0), where -1 is ambiguous
        length, dim = selected.shape[3], selected.shape[4]
        return {layer: selected[i].reshape(b, k * length, dim) for i, layer in enumerate(self.layers)}
