"""Data parallelism under ``torchrun --nproc_per_node=N run.py ...``: process group, sharding, gathering.

The configured ``train.batch_size`` is the GLOBAL batch. Global batch ``b`` of an N-process run holds exactly
the samples of batch ``b`` of the one-process run with the same generator, and rank ``r`` takes the samples
``r::N`` of it (:class:`ShardedBatchSampler`). With DDP averaging the gradients (:func:`data_parallel`), a
loss that is a mean over the local samples (times :func:`local_loss_weight` when shards differ in size), and
the contrastive term computed by every rank from the features of all ranks (:func:`all_gather_with_grad`),
one step on N ranks x B/N samples equals one step of one process on the B samples, up to fp32 rounding
(``tests/test_distributed.py``). Per-sample features for statistics come back in dataset order through
:func:`gather_in_order`. Whole runs match a single process only where the per-sample randomness (training
augmentation) does not depend on which process draws it.

Everything here is a no-op or an identity in a single process, so the engine calls it unconditionally.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from norga.engine.loaders import worker_options


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={name} asked for, but torch sees no CUDA device; use device=cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT); nccl on CUDA, gloo on CPU. Without those variables (or WORLD_SIZE=1): a single process,
    no process group. ``device`` is ``auto``, ``cpu`` or ``cuda``; on CUDA each rank takes GPU LOCAL_RANK."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = _pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size, **kwargs)
    return DistInfo(rank, world_size, local_rank, dev)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes outputs, checkpoints and W&B."""
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (at the end of a run, also after an error)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects: a run directory, a config, a decision)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _comm_device() -> torch.device:
    """Where collectives run: nccl only moves CUDA tensors, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _sizes(tensor: torch.Tensor) -> list[int]:
    n = torch.tensor([tensor.shape[0]], device=_comm_device())
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    return [int(s) for s in sizes]


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    return F.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, rows - tensor.shape[0]))


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """The tensors of all ranks concatenated along dim 0 in rank order (no gradient), on ``tensor``'s
    device. Ranks may hold different numbers of rows; the other dims and the dtype must agree. For class
    statistics and evaluation features."""
    if not is_distributed():
        return tensor
    sizes = _sizes(tensor)
    padded = _pad_rows(tensor.detach().to(_comm_device()), max(sizes)).contiguous()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(tensor.device)


class _GatherWithGrad(torch.autograd.Function):
    """Forward: all ranks' rows in rank order. Backward: the gathered tensor's gradient summed over ranks
    (all_reduce), of which each rank keeps its own rows. Public collectives only, any row counts."""

    @staticmethod
    def forward(ctx, tensor):
        sizes = _sizes(tensor)
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        padded = _pad_rows(tensor.detach(), max(sizes)).contiguous()
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Like :func:`all_gather_cat`, differentiable (``tensor`` must live where the collectives run: CUDA for
    nccl, CPU for gloo). The gradient reaching rank r's rows is the SUM over ranks of the gradients of the
    gathered tensor, as in ``torch.distributed.nn.functional.all_gather``. When every rank computes the same
    loss from it (the contrastive term), that is N x the one-process gradient, and DDP's averaging divides
    the N back out: exact."""
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather_in_order(local: torch.Tensor, local_indices: torch.Tensor, total: int) -> torch.Tensor:
    """Rows that the ranks computed for dataset indices ``local_indices`` (e.g. a
    :class:`ShardedBatchSampler`'s :meth:`~ShardedBatchSampler.local_indices`), gathered and put back in
    dataset order ``0..total-1``: the same tensor, in the same order, as one process computes."""
    rows = all_gather_cat(local)
    index = all_gather_cat(local_indices.to(rows.device))
    if len(index) != total or not torch.equal(index.sort().values, torch.arange(total, device=index.device)):
        raise ValueError(f"the ranks' indices do not cover 0..{total - 1} exactly once")
    out = torch.empty((total, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    out[index] = rows
    return out


def global_count(local_count: int) -> int:
    """The sum of ``local_count`` over all ranks: the size of the global batch this step's shards form."""
    if not is_distributed():
        return local_count
    total = torch.tensor([local_count], device=_comm_device())
    dist.all_reduce(total)
    return int(total)


def local_loss_weight(local_count: int, global_count: int, world_size: int | None = None) -> float:
    """Factor for a loss that is a mean over this rank's ``local_count`` samples, so that DDP's average over
    ranks gives the mean over the ``global_count`` samples of the global batch even when the shards differ
    in size (the last batch). 1.0 when shards are equal."""
    world_size = get_world_size() if world_size is None else world_size
    return world_size * local_count / global_count if global_count else 0.0


class ShardedBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices for one rank, such that the ranks together see exactly the batches of a
    single process.

    The single-process order is ``torch.randperm(n, generator)`` when shuffling (what ``DataLoader(shuffle=
    True, generator=g)`` draws) or ``0..n-1``; global batch ``b`` is its slice ``[b*B, (b+1)*B)`` and rank
    ``r`` of ``W`` gets that slice's elements ``r::W``. Nothing is padded or duplicated: every rank yields
    the same number of batches (so DDP never waits on a missing step), and when ``B`` or the last batch is
    not a multiple of ``W`` the shards differ by one sample (weight the loss with :func:`local_loss_weight`).
    The permutation is drawn when iteration starts, from ``generator`` (which every rank seeds alike).
    A global batch smaller than the process count leaves some ranks an empty shard: they still take the step
    (DDP needs every rank in every gradient reduction) with a zero-weight loss, see :class:`EmptySafeCollate`.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if shuffle and generator is None:
            raise ValueError("a shuffled sharded sampler needs a generator seeded alike on every rank")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.shuffle, self.generator, self.drop_last = shuffle, generator, drop_last
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        if batch_size < 1:
            raise ValueError(f"the batch size must be at least 1, got {batch_size}")
        self._order: list[int] | None = None

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def global_batches(self) -> list[list[int]]:
        """The single-process batches (draws the permutation)."""
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=self.generator).tolist()
        else:
            order = list(range(self.num_samples))
        self._order = order
        return [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(len(self))]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield batch[self.rank::self.world_size]

    def local_indices(self) -> torch.Tensor:
        """Every index this rank saw in the last iteration, in the order it saw them."""
        if self._order is None:
            raise RuntimeError("local_indices() is known once iteration has started")
        order = self._order
        batches = [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(len(self))]
        return torch.tensor([i for b in batches for i in b[self.rank::self.world_size]], dtype=torch.long)


class EmptySafeCollate:
    """``default_collate`` that also collates an empty shard, into zero-row tensors shaped like the dataset's
    items (read once from item 0), so a rank whose share of a small global batch is empty still runs the
    step: its model forward on zero rows keeps DDP's gradient reductions in step with the other ranks."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._empty: Any = None

    def __call__(self, batch: list) -> Any:
        if batch:
            return default_collate(batch)
        if self._empty is None:
            example = default_collate([self.dataset[0]])
            self._empty = tuple(t[:0] for t in example) if isinstance(example, (list, tuple)) else example[:0]
        return self._empty


def shard_loader(
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """``norga.engine.loaders.make_loader`` with a global ``batch_size`` split over the processes: with one
    process it yields exactly ``make_loader``'s batches (same generator draws, same order)."""
    sampler = ShardedBatchSampler(len(dataset), batch_size, shuffle, generator, drop_last)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=EmptySafeCollate(dataset),
        generator=generator,  # DataLoader draws its worker base seed from it first, as make_loader does
        **worker_options(device, num_workers),
    )


class TrainStep(nn.Module):
    """The trainable modules of a stage and the function that computes its loss from them.

    DDP synchronises gradients of the parameters of the module whose ``forward`` ran; the learner's
    forward is a function of a frozen backbone plus prompts and heads, so this holds the trainable modules
    (the frozen backbone stays outside: nothing to broadcast or reduce) and runs ``fn`` as its forward.
    """

    def __init__(self, modules: dict[str, nn.Module], fn: Callable[..., Any]) -> None:
        super().__init__()
        self.trainable = nn.ModuleDict(modules)
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def data_parallel(modules: dict[str, nn.Module], fn: Callable[..., Any], info: DistInfo | None = None) -> nn.Module:
    """``fn`` wrapped so that gradients of ``modules``' trainable parameters are averaged over the ranks
    (DDP); a plain :class:`TrainStep` in a single process. Wrap again whenever the set of trainable
    parameters changes (e.g. alpha/tau freezing after the first task): DDP fixes it at construction."""
    step = TrainStep(modules, fn)
    if not is_distributed():
        return step
    device = info.device if info is not None else next(step.parameters()).device
    device_ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(step, device_ids=device_ids)
