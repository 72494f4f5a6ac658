"""What the adapter methods of the PILOT line (EASE, APER) share: an adapter set trained with a cosine head on
one task's classes (cross-entropy on the task's local labels, the authors' SGD/Adam and cosine annealing per
epoch, lr not scaled by the batch, no clipping), seeded creation of fresh modules, and class means.

The adapter is AdaptFormer's (:class:`~norga.models.peft.AdapterSet`): it reads the post-attention residual,
no LayerNorm, ReLU, dropout on the bottleneck in training, scale 0.1, zero up-projection at creation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from functools import partial

import torch
import torch.nn.functional as F

from norga.engine.seeding import stage_seed

#: ``method.optimizer`` -> torch optimiser class (``adam`` is Adam with coupled L2 decay, as EASE's code)
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def make_optimizer(name: str, momentum: float, weight_decay: float) -> Callable:
    """A partial optimiser of ``name`` (``sgd``: with ``momentum``) and ``weight_decay`` on every group."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is not one of {', '.join(OPTIMIZERS)}")
    extra = {"momentum": float(momentum)} if name == "sgd" else {}
    return partial(OPTIMIZERS[name], weight_decay=float(weight_decay), **extra)


@contextlib.contextmanager
def seeded(seed: int, task: int, what: str) -> Iterator[None]:
    """The global RNG seeded from the run seed, ``task`` and ``what`` inside, restored after: a module created
    inside is the same whatever ran before it (resumed runs, every process of a data-parallel run)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stage_seed(seed, task, what))
        yield


def local_columns(task_classes: list[int], num_classes: int, device: torch.device) -> torch.Tensor:
    """``(C,)``: global class id -> its column in a head over ``task_classes`` (-1 elsewhere)."""
    column = torch.full((num_classes,), -1, dtype=torch.long, device=device)
    column[torch.as_tensor(task_classes, device=device)] = torch.arange(len(task_classes), device=device)
    return column


def class_means(features: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """``(len(classes), d)``: the mean feature of each class (summed in float64: order-free beyond rounding)."""
    return torch.stack([features[labels == c].double().mean(dim=0) for c in classes]).float()


def block_cosines(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(n, S, C)``: the cosine between feature block ``s`` ``(n, S, D)`` and weight block ``s`` ``(S, C, D)``,
    each 768-d block L2-normalised on its own (a zero block gives 0)."""
    return torch.einsum("nsd,scd->nsc", F.normalize(features, dim=-1), F.normalize(weights, dim=-1))


def concat_cosine(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(n, C)``: one cosine between the concatenated features ``(n, S, D)`` and weights ``(S, C, D)``."""
    f = F.normalize(features.flatten(1), dim=1)
    w = F.normalize(weights.permute(1, 0, 2).flatten(1), dim=1)
    return f @ w.T


def state_sizes(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many indexed submodules ``prefix<k>.`` a state dict holds (``sets.`` of an AdapterBank)."""
    ids = {int(k[len(prefix):].split(".", 1)[0]) for k in state if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0
