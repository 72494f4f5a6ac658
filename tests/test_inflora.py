"""InfLoRA (docs/algorithm.md#inflora): the designed down-projection avoids the stored subspace, the DualGPM
threshold rule keeps the hand-counted number of directions, merged branches equal unmerged ones, only the
current task's up-projection and head train, and the covariance is the LN1 output's second moment."""

import math
import os

import pytest
import torch

from norga.engine import faults
from norga.engine.run import ContinualRun
from norga.engine.stages import StageContext
from norga.methods.inflora_memory import (
    REMOVE,
    RETAIN,
    SubspaceMemory,
    design_down,
    first_basis,
    threshold,
    update_remove,
    update_retain,
)
from norga.models.peft import peft_blocks
from tests.learning import assert_same_learned_state, compose_cfg, learned_state_difference

D = 24


def random_cov(seed: int, dim: int = D, rank: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, rank or dim, generator=g) @ torch.randn(rank or dim, dim, generator=g)
    return x.T @ x / 200


def diag_cov(values) -> torch.Tensor:
    return torch.diag(torch.tensor(values, dtype=torch.float64))


# ---- the memory and the design -----------------------------------------------------------------------------
def test_threshold_grows_linearly_from_lamb_to_lame():
    assert threshold(0.95, 1.0, 0, 10) == 0.95
    assert math.isclose(threshold(0.9, 1.0, 4, 5), 0.98)


def test_first_task_keeps_prefix_sums_of_squared_eigenvalues_below_the_threshold():
    # eigenvalues 4, 3, 2, 1, 0...: squared 16, 9, 4, 1 (total 30); prefix shares 0.533, 0.833, 0.967, 1.0
    cov = diag_cov([4, 3, 2, 1] + [0] * (D - 4))
    for eps, kept in [(0.5, 1), (0.6, 1), (0.9, 2), (0.97, 3), (0.99, 3)]:
        assert first_basis(cov, eps, "squared_eigs").shape[1] == kept, eps  # the crossing component is not kept
    # on the eigenvalues themselves (total 10; shares 0.4, 0.7, 0.9, 1.0)
    assert first_basis(cov, 0.75, "eigs").shape[1] == 2
    assert first_basis(cov, 0.95, "eigs").shape[1] == 3
    # nothing below eps: one direction all the same
    assert first_basis(cov, 0.3, "squared_eigs").shape[1] == 1
    # the kept directions are the top eigenvectors
    basis = first_basis(cov, 0.9, "squared_eigs")
    assert torch.allclose(basis.abs(), torch.eye(D, dtype=torch.float64)[:, :2])


def test_a_later_task_appends_directions_including_the_crossing_one():
    # memory e1; new covariance: e1 (energy 5^2 = 25) + e2 (3^2 = 9) + e3 (2^2 = 4) + e4 (1): total 39
    memory = torch.eye(D, dtype=torch.float64)[:, :1]
    cov = diag_cov([5, 3, 2, 1] + [0] * (D - 4))
    # acc starts at 25/39 = 0.641; + 9/39 -> 0.872; + 4/39 -> 0.974; + 1/39 -> 1.0
    for eps, added in [(0.6, 0), (0.7, 1), (0.9, 2), (0.98, 3)]:
        grown = update_remove(memory, cov, eps, "squared_eigs")
        assert grown.shape[1] == 1 + added, eps
    grown = update_remove(memory, cov, 0.9, "squared_eigs")
    assert torch.allclose(grown.abs(), torch.eye(D, dtype=torch.float64)[:, :3])


def test_a_free_space_shrinks_by_the_directions_the_new_task_fills():
    # free space e2..e4; the new task's energy: e2 has 16 of a total 16 + 9 + 1 = 26 (e1 9, e3 1)
    free = torch.eye(D, dtype=torch.float64)[:, 1:4]
    cov = diag_cov([3, 4, 1, 0] + [0] * (D - 4))
    # acc = (16 + 1) / 26 = 0.654 inside F; steps while acc >= 1 - eps: 1 - eps = 0.5 -> r = 1 (0.654 -> 0.038)
    shrunk = update_retain(free, cov, 0.5, "squared_eigs")
    assert shrunk.shape[1] == 2
    # what is left of F is orthogonal to e2, the filled direction
    assert shrunk[1].abs().max() < 1e-12
    # 1 - eps = 0.7 > 0.654: nothing to remove
    assert update_retain(free, cov, 0.3, "squared_eigs").shape[1] == 3


def test_dualgpm_stores_a_protected_space_above_half_the_inputs_as_its_free_complement():
    memory = SubspaceMemory(1, 8, "eigs", "dualgpm")
    memory.update([diag_cov([8, 7, 6, 5, 4, 3, 2, 1]).float()], 0.5)  # shares 8/36 ... -> 2 kept
    assert int(memory.cols[0]) == 2 and int(memory.kind[0]) == REMOVE
    memory.update([diag_cov([1, 1, 8, 7, 6, 5, 4, 3]).float()], 0.9)  # grows past 4 of 8 columns
    assert int(memory.kind[0]) == RETAIN
    free, _ = memory.get(0)
    # the free space is orthogonal to everything protected so far (e1, e2 at least) and orthonormal
    assert free[:2].abs().max() < 1e-6
    assert torch.allclose(free.T @ free, torch.eye(free.shape[1]), atol=1e-6)
    # a first task that fills more than half the inputs: its free complement at once
    wide = SubspaceMemory(1, 8, "eigs", "dualgpm")
    wide.update([diag_cov([1, 1, 1, 1, 1, 1, 1, 1]).float()], 0.8)  # shares 1/8 ... 7/8: 6 kept
    assert int(wide.kind[0]) == RETAIN and int(wide.cols[0]) == 2
    gpm = SubspaceMemory(1, 8, "eigs", "gpm")
    gpm.update([diag_cov([8, 7, 6, 5, 4, 3, 2, 1]).float()], 0.5)
    gpm.update([diag_cov([1, 1, 8, 7, 6, 5, 4, 3]).float()], 0.9)
    assert int(gpm.kind[0]) == REMOVE and int(gpm.cols[0]) > 4  # GPM never switches


@pytest.mark.parametrize("energy_on", ["squared_eigs", "eigs"])
def test_designed_down_projection_is_orthogonal_to_the_protected_subspace(energy_on):
    memory = SubspaceMemory(1, D, energy_on, "dualgpm")
    memory.update([random_cov(0, rank=5)], 0.95)
    basis, kind = memory.get(0)
    assert kind == REMOVE and 1 <= basis.shape[1] < D / 2
    down = design_down(random_cov(1), basis, kind, rank=4)
    assert down.shape == (4, D)
    assert (down.double() @ basis.double()).abs().max() < 1e-5
    # rows orthonormal up to the authors' 1 / sqrt(3)
    assert torch.allclose(3 * down @ down.T, torch.eye(4, dtype=down.dtype), atol=1e-6)
    # a free space: the design lies inside it
    free = torch.linalg.qr(torch.randn(D, 6, generator=torch.Generator().manual_seed(2)))[0]
    inside = design_down(random_cov(3), free, RETAIN, rank=4).float()
    assert (inside - inside @ free @ free.T).abs().max() < 1e-5


def test_first_design_is_the_top_eigenvectors_over_sqrt3():
    cov = diag_cov([1, 5, 3] + [0.1] * (D - 3))
    down = design_down(cov, None, 0, rank=2)
    expected = torch.zeros(2, D, dtype=torch.float64)
    expected[0, 1] = expected[1, 2] = 1 / math.sqrt(3)
    assert torch.allclose(down, expected)


# ---- the learner on the tiny ViT ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def learner(tmp_path_factory):
    cfg = compose_cfg(["method=inflora", "method.lora_layers=[0,2]", "method.rank=3", "device=cpu"])
    return ContinualRun(cfg, tmp_path_factory.mktemp("inflora")).learner


def randomise(learner, tasks):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for s in range(tasks):
            for p in learner.branches.tasks[s].parameters():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def images(n=3):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_merged_branches_give_the_unmerged_features(learner):
    randomise(learner, 2)
    x = images()
    assert learner.branches.plan(1)  # branches attached
    with torch.no_grad():
        unmerged = learner.lora_features(x, 1)
        plain = learner.backbone_features(x)
        learner.branches.merge_upto(learner.backbone, 2)
        assert learner.branches.plan(1) == {}  # nothing attached: all in the weights
        merged = learner.lora_features(x, 1)
        learner.branches.unmerge_all()
        back = learner.lora_features(x, 1)
    assert (unmerged - plain).abs().max() > 1e-3  # the branches change the features
    assert (merged - unmerged).abs().max() < 1e-5
    assert (back - unmerged).abs().max() < 1e-5


def test_merged_state_reloads_into_a_fresh_backbone_merged(learner, tmp_path):
    randomise(learner, 2)
    with torch.no_grad():
        unmerged = learner.lora_features(images(), 1)
    learner.branches.merge_upto(learner.backbone, 2)
    state = {k: {n: t.clone() for n, t in v.items()} for k, v in learner.state_dict().items()}
    learner.load_state_dict(state)  # unmerges, loads, merges again
    assert int(learner.branches.merged) == 2 and learner.branches.plan(1) == {}
    with torch.no_grad():
        assert (learner.lora_features(images(), 1) - unmerged).abs().max() < 1e-5
    learner.branches.unmerge_all()


def test_only_the_current_up_projection_and_head_get_gradients(learner):
    randomise(learner, 2)
    loss_fn, params = learner.benchmark_step(1)
    ups = set(learner.branches.ups(1))
    assert set(params) == ups | set(learner.heads[1].parameters())
    before = {n: p.detach().clone() for n, p in learner.branches.named_parameters()}
    head0 = learner.heads[0].weight.detach().clone()
    x, y = images(4), torch.tensor(learner.benchmark.task_classes[1][:2] * 2)
    opt = torch.optim.Adam(params, lr=0.1)
    loss_fn(x, y).backward()
    for name, p in learner.branches.named_parameters():
        own_up = p in ups
        assert (p.grad is not None and p.grad.abs().sum() > 0) if own_up else p.grad is None, name
    assert learner.heads[0].weight.grad is None
    opt.step()
    for name, p in learner.branches.named_parameters():
        assert torch.equal(p, before[name]) != (p in ups), name
    assert torch.equal(learner.heads[0].weight, head0)
    opt.zero_grad(set_to_none=True)


def test_covariance_is_the_mean_second_moment_of_the_ln1_output(learner):
    learner.branches.unmerge_all()
    ctx = StageContext(task=0, stage="design", seed=3, max_batches=1)
    covs = learner.input_covariances(ctx, -1)
    # the same first batch, its LN1 outputs by hand
    x, _ = next(iter(learner.train_loader(0, ctx.seed_epoch(0, stage="design/covariance"))))
    seen = {}
    blocks = peft_blocks(learner.backbone)
    hooks = [blocks[b].norm1.register_forward_hook(lambda m, a, o, b=b: seen.__setitem__(b, o)) for b in (0, 2)]
    with torch.no_grad():
        learner.backbone_features(x)
    for h in hooks:
        h.remove()
    for cov, b in zip(covs, (0, 2)):
        tokens = seen[b].reshape(-1, seen[b].shape[-1]).double()
        assert torch.allclose(cov, tokens.T @ tokens / len(tokens), atol=1e-5)
    # the design stage writes one D per block, the same for k and v, orthogonal rows / sqrt(3)
    learner.design(ctx)
    for b in ("0", "2"):
        k, v = learner.branches.tasks[0].loras[b]["k"].down, learner.branches.tasks[0].loras[b]["v"].down
        assert torch.equal(k, v) and torch.allclose(3 * k @ k.T, torch.eye(3), atol=1e-5)


def test_logits_put_each_tasks_head_at_its_classes_and_mask_unseen(learner):
    f = torch.randn(2, learner.backbone.embed_dim)
    with torch.no_grad():
        out = learner.logits(f, 0)
        classes0 = learner.benchmark.task_classes[0]
        assert torch.allclose(out[:, classes0], learner.heads[0](f))
        unseen = [c for c in range(learner.benchmark.num_classes) if c not in classes0]
        assert torch.isinf(out[:, unseen]).all()


# ---- merged branches through a killed and resumed run -------------------------------------------------------
class _Killed(Exception):
    pass


@pytest.mark.xdist_group("reference_inflora")
def test_merged_run_resumes_exactly_and_equals_the_unmerged_run(reference_run, tmp_path, monkeypatch):
    """With method.merge_old=true task 0's branches live in the backbone's weights during task 1; a run killed
    there (and in task 1's memory stage) re-merges them on resume and ends bit for bit as the uninterrupted
    merged run. That run's learned tensors stay close to the unmerged run's: the forward passes differ by
    float rounding (1e-7), which Adam's normalised steps grow to about 1e-4 in task 1's up-projections (a
    re-merge missing or doubled after resuming breaks the bitwise comparison)."""
    unmerged_dir, unmerged = reference_run("inflora")
    merged_cfg = lambda extra=(): compose_cfg(["method=inflora", "method.merge_old=true", *extra])  # noqa: E731
    merged = ContinualRun(merged_cfg(), tmp_path / "merged").run()

    def kill(pid, sig):
        raise _Killed(os.environ[faults.ENV])

    monkeypatch.setattr(os, "kill", kill)
    killed = tmp_path / "killed"
    for kills, point in enumerate(["task1/train/epoch1/step0", "task1/memory/start"]):
        monkeypatch.setenv(faults.ENV, point)
        with pytest.raises(_Killed, match=point):
            ContinualRun(merged_cfg(["resume=true"] if kills else []), killed).run()
    monkeypatch.delenv(faults.ENV)
    resumed = ContinualRun(merged_cfg(["resume=true"]), killed).run()
    assert resumed["acc_matrix"] == merged["acc_matrix"]
    assert_same_learned_state(killed, tmp_path / "merged", tasks=2, atol=0.0)
    for task in range(2):
        worst, where = learned_state_difference(tmp_path / "merged", unmerged_dir, task)
        assert worst < 1e-3, (task, where, worst)
    assert abs(merged["final_avg_acc"] - unmerged["final_avg_acc"]) < 2.0


def test_features_of_a_sample_do_not_depend_on_its_batch(learner):
    randomise(learner, 2)
    learner.memory.tasks.fill_(2)
    x = images(4)
    try:
        together = learner.query(x)
        alone = torch.cat([learner.query(x[i:i + 1]) for i in range(len(x))])
    finally:
        learner.memory.tasks.zero_()
    assert (together - alone).abs().max() < 1e-5
    assert learner.features(None, None, together) is together


def spec_dualgpm(covs, eps_list, energy="squared"):
    """The memory update of spec 1.2 step 6 written out again with numpy, independently of the module: returns
    (type, basis) after each task."""
    import numpy as np

    def e(s):
        return s ** 2 if energy == "squared" else s

    out, basis, kind = [], None, None
    for t, (c, eps) in enumerate(zip(covs, eps_list)):
        c = c.double().numpy()
        d = c.shape[0]
        u, s, _ = np.linalg.svd(c)
        total = e(s).sum()
        if t == 0:
            k = int(np.sum(np.cumsum(e(s) / total) < eps))
            basis, kind = u[:, :max(k, 1)], "remove"
        elif kind == "remove":
            uh, sh, _ = np.linalg.svd(c - basis @ basis.T @ c)
            acc, r = (total - e(sh).sum()) / total, 0
            while r < len(sh) and acc < eps:
                acc += e(sh[r]) / total
                r += 1
            basis = np.hstack([basis, uh[:, :r]])[:, :d]
        else:
            uh, sh, _ = np.linalg.svd(basis @ basis.T @ c)
            acc, r = e(sh).sum() / total, 0
            while r < len(sh) and acc >= 1 - eps:
                acc -= e(sh[r]) / total
                r += 1
            if r:
                ur = uh[:, :r]
                basis = np.linalg.svd(basis - ur @ ur.T @ basis)[0][:, :basis.shape[1] - r]
        if kind == "remove" and basis.shape[1] > d / 2:
            basis, kind = np.linalg.svd(basis)[0][:, basis.shape[1]:], "retain"
        out.append((kind, basis))
    return out


@pytest.mark.parametrize("energy_on", ["squared_eigs", "eigs"])
def test_memory_follows_the_written_out_dualgpm_over_several_tasks(energy_on):
    # tasks whose inputs live in different 5-dimensional subspaces of 16: the memory grows, switches to a free
    # space and then shrinks it
    d, tasks = 16, 5
    covs = [random_cov(10 + t, dim=d, rank=5) + 1e-3 * torch.eye(d) for t in range(tasks)]
    eps = [threshold(0.9, 1.0, t, tasks) for t in range(tasks)]
    memory = SubspaceMemory(1, d, energy_on, "dualgpm")
    expected = spec_dualgpm(covs, eps, "squared" if energy_on == "squared_eigs" else "plain")
    kinds = []
    for t, (kind, basis) in enumerate(expected):
        memory.update([covs[t]], eps[t])
        got, got_kind = memory.get(0)
        kinds.append(kind)
        assert got_kind == (REMOVE if kind == "remove" else RETAIN), t
        assert got.shape[1] == basis.shape[1], t
        b = torch.from_numpy(basis).float()
        assert torch.allclose(got @ got.T, b @ b.T, atol=1e-5), t  # the same subspace
    # every path was taken: growing a protected space, the switch, and shrinking a free space
    assert kinds[:2] == ["remove", "remove"] and kinds[-2:] == ["retain", "retain"]
