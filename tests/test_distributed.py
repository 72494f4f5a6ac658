"""Data parallelism is exact: one training step on 2 CPU processes (gloo) x B/2 samples gives the parameters of
one process on the same B samples; gathers keep rank order; the sharded sampler splits exactly the
single-process batches."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from norga.engine.distributed import (
    ShardedBatchSampler,
    all_gather_cat,
    all_gather_with_grad,
    cleanup,
    data_parallel,
    gather_in_order,
    get_world_size,
    global_count,
    init_distributed,
    is_main,
    local_loss_weight,
    shard_loader,
)
from norga.engine.loaders import make_loader
from norga.engine.loops import masked_logits
from norga.methods.hide_prompt import contrastive_loss
from norga.models.peft import PeftBlock
from norga.models.prompts import PromptPool
from norga.models.vit import init_linear, vit_features

DIM, HEADS, CLASSES = 32, 4, 6
WORLD = 2
# (task, global batch): task 0 learns alpha/tau, no stored means; task 1 has prompt momentum, stored class
# means in the contrastive term, and a batch that does not split evenly (shards of 4 and 3).
SCENARIOS = [(0, 8), (1, 7)]


# ---- the learner's WTP step, written as the learner does it (HiDePrompt.wtp_train + loops.train_epoch) ------
def build():
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=DIM, depth=2, num_heads=HEADS, num_classes=0,
                            block_fn=PeftBlock).requires_grad_(False).eval()
    pool = PromptPool([0, 1], num_tasks=2, length=3, num_heads=HEADS, head_dim=DIM // HEADS, gate="tanh")
    head = nn.Linear(DIM, CLASSES)
    init_linear(head)
    return vit, pool, head


def global_batch(task, size):
    gen = torch.Generator().manual_seed(100 + task)
    x = torch.randn(size, 3, 16, 16, generator=gen)
    y = torch.randint(0, 3, (size,), generator=gen) + 3 * task  # task t holds classes 3t..3t+2
    return x, y


def train_step(task, x, y, global_size):
    """One optimiser step; ``x, y`` are this process's shard of a global batch of ``global_size``."""
    vit, pool, head = build()
    pool.gate_params.requires_grad_(task == 0)
    momentum = 0.1 if task > 0 else 0.0
    allowed = torch.zeros(CLASSES, dtype=torch.bool)
    allowed[3 * task:3 * task + 3] = True
    means = torch.randn(3, DIM, generator=torch.Generator().manual_seed(7)) if task > 0 else None
    prompt_params = [p for p in pool.parameters() if p.requires_grad]
    head_params = list(head.parameters())
    lr = 0.03 * global_size / 256
    optimizer = torch.optim.Adam([{"params": prompt_params, "lr": lr}, {"params": head_params, "lr": lr * 0.1}])
    weight = local_loss_weight(len(y), global_count(len(y)))

    def loss_fn(x, y):
        feats = vit_features(vit, x, pool.prefixes_for_task(task, len(x), momentum))
        loss = weight * F.cross_entropy(masked_logits(head(feats), allowed), y)
        return loss + 0.1 * contrastive_loss(all_gather_with_grad(feats), means, 0.8)

    step = data_parallel({"prompts": pool, "head": head}, loss_fn)
    loss = step(x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(prompt_params + head_params, 1.0)
    optimizer.step()
    return {"prompts": pool.prompts.detach().clone(), "gate": pool.gate_params.detach().clone(),
            "head": head.weight.detach().clone(), "bias": head.bias.detach().clone()}


# ---- the 2-process side --------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    try:
        out = {"info": (info.rank, info.world_size, info.device.type, is_main(), get_world_size())}
        # unequal row counts, gathered in rank order
        local = torch.arange(3 - rank, dtype=torch.float32)[:, None] + 10 * rank
        out["gathered"] = all_gather_cat(local)
        out["gathered_labels"] = all_gather_cat(torch.tensor([rank] * (2 + rank)))
        out["global_count"] = global_count(4 - rank)
        # differentiable gather: the gradient of rank r's rows sums every rank's use of them
        leaf = torch.full((1 + rank, 2), float(rank + 1), requires_grad=True)
        gathered = all_gather_with_grad(leaf)
        (gathered * torch.arange(1.0, len(gathered) + 1)[:, None]).sum().backward()
        out["gather_grad"] = leaf.grad
        # per-sample features back in dataset order
        sampler = ShardedBatchSampler(11, 4, shuffle=True, generator=torch.Generator().manual_seed(5))
        seen = [i for batch in sampler for i in batch]
        out["ordered"] = gather_in_order(torch.tensor(seen, dtype=torch.float32) * 2, sampler.local_indices(), 11)
        for task, size in SCENARIOS:
            x, y = global_batch(task, size)
            out[f"step_{task}"] = train_step(task, x[rank::world], y[rank::world], size)
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        cleanup()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("ddp"))
    mp.spawn(_worker, args=(WORLD, _free_port(), out_dir), nprocs=WORLD, join=True)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]


def test_processes_join_a_gloo_group(two_ranks):
    assert [r["info"] for r in two_ranks] == [(0, 2, "cpu", True, 2), (1, 2, "cpu", False, 2)]


@pytest.mark.parametrize(("task", "size"), SCENARIOS)
def test_two_ranks_step_equals_one_process_step(two_ranks, task, size):
    x, y = global_batch(task, size)
    single = train_step(task, x, y, size)
    initial = {"prompts": build()[1].prompts, "head": build()[2].weight}
    for rank in range(WORLD):
        got = two_ranks[rank][f"step_{task}"]
        for name, value in single.items():
            assert torch.allclose(got[name], value, atol=1e-6, rtol=0), (rank, name)
    # the step moved what it trains (the comparison is not between untouched tensors)
    assert not torch.allclose(single["prompts"][:, :, task], initial["prompts"][:, :, task])
    assert not torch.allclose(single["head"], initial["head"])
    if task == 0:
        assert not torch.equal(single["gate"], torch.ones_like(single["gate"]))


def test_data_parallel_average_would_be_wrong_without_the_gradient_gather(two_ranks):
    """The equality above needs every rank's contrastive term to reach every rank's features: with a
    local-only contrastive term the parameters differ."""
    task, size = SCENARIOS[0]
    x, y = global_batch(task, size)
    vit, pool, head = build()

    def local_only(xs, ys):
        feats = vit_features(vit, xs, pool.prefixes_for_task(task, len(xs)))
        return contrastive_loss(feats, None, 0.8)

    full = torch.autograd.grad(local_only(x, y), pool.prompts)[0]
    halves = sum(torch.autograd.grad(local_only(x[r::2], y[r::2]), pool.prompts)[0] for r in range(2)) / 2
    assert not torch.allclose(full, halves, atol=1e-4)


def test_all_gather_cat_keeps_rank_order_with_unequal_sizes(two_ranks):
    expected = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    for out in two_ranks:
        assert torch.equal(out["gathered"], expected)
        assert torch.equal(out["gathered_labels"], torch.tensor([0, 0, 1, 1, 1]))
        assert out["global_count"] == 7


def test_all_gather_with_grad_sums_every_ranks_gradient(two_ranks):
    # rows: rank 0 has 1, rank 1 has 2; each rank weights gathered row i by i + 1, and both ranks backprop
    assert torch.equal(two_ranks[0]["gather_grad"], torch.full((1, 2), 2.0))
    assert torch.equal(two_ranks[1]["gather_grad"], torch.tensor([[4.0, 4.0], [6.0, 6.0]]))


def test_gather_in_order_restores_dataset_order(two_ranks):
    for out in two_ranks:
        assert torch.equal(out["ordered"], torch.arange(11, dtype=torch.float32) * 2)


# ---- the sampler, in one process -----------------------------------------------------------------------------
class Indices(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize(("world", "batch"), [(1, 6), (2, 6), (3, 6), (3, 2), (2, 1)])
def test_ranks_split_exactly_the_single_process_batches(world, batch, shuffle):
    """Also with global batches smaller than the process count: some ranks then get empty shards."""
    n = 23
    single = [b.tolist() for b in make_loader(Indices(n), batch, torch.device("cpu"), shuffle=shuffle,
                                              generator=torch.Generator().manual_seed(9) if shuffle else None)]
    per_rank = []
    for rank in range(world):
        sampler = ShardedBatchSampler(n, batch, shuffle, torch.Generator().manual_seed(9) if shuffle else None,
                                      rank=rank, world_size=world)
        # DataLoader draws its worker base seed from the generator before the permutation: do the same
        if shuffle:
            torch.empty((), dtype=torch.int64).random_(generator=sampler.generator)
        per_rank.append(list(sampler))
    assert {len(b) for b in per_rank} == {len(single)}, "every rank takes the same number of steps"
    for b, global_batch_ in enumerate(single):
        shards = [per_rank[r][b] for r in range(world)]
        assert shards == [global_batch_[r::world] for r in range(world)]


def test_an_empty_shard_collates_to_zero_rows_shaped_like_the_items():
    dataset = torch.utils.data.TensorDataset(torch.randn(5, 3, 4, 4), torch.arange(5))
    loader = shard_loader(dataset, 2, torch.device("cpu"))
    loader.batch_sampler.rank, loader.batch_sampler.world_size = 2, 3  # rank 2 of 3: every shard empty
    batches = list(loader)
    assert len(batches) == 3 and all(x.shape == (0, 3, 4, 4) and y.shape == (0,) for x, y in batches)


def test_shard_loader_in_one_process_is_make_loader():
    ours = [b.tolist() for b in shard_loader(Indices(23), 6, torch.device("cpu"), shuffle=True,
                                             generator=torch.Generator().manual_seed(4))]
    theirs = [b.tolist() for b in make_loader(Indices(23), 6, torch.device("cpu"), shuffle=True,
                                              generator=torch.Generator().manual_seed(4))]
    assert ours == theirs


def test_seeded_sampler_and_single_process_helpers():
    a, b, c = (list(ShardedBatchSampler(10, 4, True, torch.Generator().manual_seed(seed))) for seed in (3, 3, 4))
    assert a == b and a != c
    assert sorted(i for batch in a for i in batch) == list(range(10))
    info = init_distributed("cpu")  # no torchrun variables: one process, no group
    assert (info.rank, info.world_size, info.distributed, info.is_main) == (0, 1, False, True)
    x = torch.randn(3, 2)
    assert all_gather_cat(x) is x and all_gather_with_grad(x) is x
    assert local_loss_weight(4, 4) == 1.0 and global_count(5) == 5
