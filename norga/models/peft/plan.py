"""What a forward pass attaches to each block: a :class:`BlockPeft` per block index, composed from the
modules of every kind a method uses.

A *plan* is ``dict[int, BlockPeft]`` (block index -> what that block applies in this pass). Modules hand
out plans (``LoRALayers.plan()``, ``AdapterBank.plan(i)``); :func:`attachments` turns the prompt modules'
per-kind dicts (prefixes, prompt tokens) into one; :func:`compose` joins several into one plan per block.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch

from norga.models.attention import Prefix

#: LoRA targets: the q, k, v slices of the fused ``attn.qkv`` (or all of it), ``attn.proj``, ``mlp.fc1``/``fc2``
LORA_TARGETS = ("q", "k", "v", "qkv", "proj", "fc1", "fc2")
#: the linear layer of a block each target lives in
TARGET_LINEAR = {"q": "qkv", "k": "qkv", "v": "qkv", "qkv": "qkv", "proj": "proj", "fc1": "fc1", "fc2": "fc2"}

Adapter = Callable[[torch.Tensor], torch.Tensor]


class LowRankBranch(Protocol):
    """A weight delta on one linear layer: ``forward(x)`` gives what it adds to the layer's output (for a q,
    k or v target: to that slice only); ``delta_weight()`` the same delta as a ``(out, in)`` matrix (for
    merging into the frozen weight). :class:`~norga.models.peft.lora.LoRA` is one; a method may bring its
    own (per-sample pools, normalised or magnitude-scaled directions)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def delta_weight(self) -> torch.Tensor: ...


@dataclass
class BlockPeft:
    """What one block applies in one forward pass.

    ``prefix``: keys/values its queries also attend to (prefix tuning, NoRGa's gate). ``tokens``: ``(B, n, dim)``
    prompt tokens put in front of the sequence before the block (prompt tuning, L2P). ``lora``: target (one of
    :data:`LORA_TARGETS`) -> branches added to that linear layer's output. ``adapters``: callables of the
    post-attention residual ``h`` whose outputs are added to the MLP's (AdaptFormer, parallel to the MLP).
    """

    prefix: Prefix | None = None
    tokens: torch.Tensor | None = None
    lora: dict[str, tuple[LowRankBranch, ...]] = field(default_factory=dict)
    adapters: tuple[Adapter, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.lora) - set(LORA_TARGETS))
        if unknown:
            raise ValueError(f"unknown LoRA target(s) {unknown}; targets are {', '.join(LORA_TARGETS)}")

    def is_empty(self) -> bool:
        return self.prefix is None and self.tokens is None and not self.lora and not self.adapters


def _join(a: BlockPeft, b: BlockPeft, block: int) -> BlockPeft:
    for kind in ("prefix", "tokens"):
        if getattr(a, kind) is not None and getattr(b, kind) is not None:
            raise ValueError(f"block {block} gets two {kind} attachments in one pass: concatenate them into one "
                             f"(a block takes one {kind} per pass)")
    lora = dict(a.lora)
    for target, branches in b.lora.items():
        lora[target] = lora.get(target, ()) + tuple(branches)
    return BlockPeft(prefix=a.prefix if a.prefix is not None else b.prefix,
                     tokens=a.tokens if a.tokens is not None else b.tokens,
                     lora=lora, adapters=tuple(a.adapters) + tuple(b.adapters))


def compose(*plans: Mapping[int, BlockPeft] | None) -> dict[int, BlockPeft]:
    """One plan from several, block by block: LoRA branches and adapters accumulate (in the order given),
    a block gets at most one prefix and one set of prompt tokens (a second raises ValueError)."""
    out: dict[int, BlockPeft] = {}
    for plan in plans:
        for block, peft in (plan or {}).items():
            out[block] = _join(out[block], peft, block) if block in out else peft
    return {block: peft for block, peft in out.items() if not peft.is_empty()}


def attachments(
    prefixes: Mapping[int, Prefix] | None = None,
    tokens: Mapping[int, torch.Tensor] | None = None,
    lora: Mapping[int, Mapping[str, LowRankBranch]] | None = None,
    adapters: Mapping[int, Adapter] | None = None,
) -> dict[int, BlockPeft]:
    """A plan from per-kind dicts keyed by block index (what the prompt modules hand out: ``PromptPool``,
    ``SharedPrefix``, ``CodaPrompt`` give prefixes, ``TokenPromptPool`` tokens)."""
    plans = [{i: BlockPeft(prefix=p) for i, p in (prefixes or {}).items()},
             {i: BlockPeft(tokens=t) for i, t in (tokens or {}).items()},
             {i: BlockPeft(lora={t: (b,) for t, b in per.items()}) for i, per in (lora or {}).items()},
             {i: BlockPeft(adapters=(a,)) for i, a in (adapters or {}).items()}]
    return compose(*plans)
