"""AdaptFormer-style bottleneck adapters, parallel to the MLP of every block of a timm ViT (RanPAC's
first-session adaptation, docs/algorithm.md#ranpac).

In block ``i`` the adapter reads the residual stream after attention (the input of ``norm2``) and its
output is added to the MLP's output:

    x = x + attn(norm1(x));   x = x + mlp(norm2(x)) + scale * up(dropout(relu(down(x))))

The adapters live outside the backbone (its state dict and its freezing stay as they are) and reach it
through two forward hooks per block: one on ``norm2`` keeps its input, one on ``mlp`` adds the adapter's
output to the MLP's. timm's ``Block`` puts ``ls2`` (LayerScale) and ``drop_path2`` after the MLP; both are
identities for the backbones norga uses, so the sum is the authors' ``mlp(norm2(x)) + adapter(x)``.
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.hooks import RemovableHandle


class Adapter(nn.Module):
    """``scale * up(dropout(relu(down(x))))``: down kaiming-uniform, up and both biases zero, so a new adapter
    adds exactly zero (the backbone's features are unchanged until it trains)."""

    def __init__(self, dim: int, bottleneck: int, dropout: float, scale: float) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.dropout = nn.Dropout(dropout)
        self.scale = float(scale)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.dropout(torch.relu(self.down(x))))


class ParallelAdapters(nn.Module):
    """One :class:`Adapter` per block of ``vit``, attached by forward hooks (see the module docstring)."""

    def __init__(self, vit: VisionTransformer, bottleneck: int, dropout: float, scale: float) -> None:
        super().__init__()
        for i, block in enumerate(vit.blocks):
            if not (hasattr(block, "norm2") and hasattr(block, "mlp")):
                raise TypeError(f"block {i} of the backbone ({type(block).__name__}) has no norm2/mlp pair: "
                                "adapters parallel to the MLP need timm's ViT Block")
        self.adapters = nn.ModuleList(Adapter(vit.embed_dim, bottleneck, dropout, scale) for _ in vit.blocks)
        self._inputs: dict[int, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []
        for i, block in enumerate(vit.blocks):
            self._handles.append(block.norm2.register_forward_pre_hook(self._keep_input(i)))
            self._handles.append(block.mlp.register_forward_hook(self._add_output(i)))

    def _keep_input(self, i: int):
        def hook(_module, args):
            self._inputs[i] = args[0]
        return hook

    def _add_output(self, i: int):
        def hook(_module, _args, output):
            # pop: the kept activation is released as soon as it is used
            return output + self.adapters[i](self._inputs.pop(i)).to(output.dtype)
        return hook

    def remove(self) -> None:
        """Detach from the backbone (it computes its own features again)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
