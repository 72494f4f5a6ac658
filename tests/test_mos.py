"""MOS's formulas on random weights (docs/algorithm.md#mos): the merge pull equals its written-out update in both
merge modes (with the per-block count of the authors' code), a zero-up adapter leaves the ViT unchanged, frozen
snapshots' test features are cached (O(T) passes) and a changed one is recomputed, and predictions do not depend on
the test batch size with the corrected switch, while the reference drift makes the stored adapters depend on it."""

from __future__ import annotations

import math

import pytest
import torch

from norga.engine.evaluate import Evaluator
from norga.engine.run import ContinualRun
from norga.methods.mos import refine
from norga.models.mos import SnapshotAdapters
from norga.models.peft import AdapterSet, peft_blocks
from norga.models.vit import vit_features
from tests.learning import compose_cfg

M = 0.1


def randomise(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def values(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def pulled(theta: list[torch.Tensor], mean: list[torch.Tensor], times: int, m: float = M) -> list[torch.Tensor]:
    """``times`` pulls written out: c + (1 - m)^times (theta - c), c the mean of the earlier snapshots."""
    return [c + (1 - m) ** times * (t - c) for t, c in zip(theta, mean)]


def close(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 1e-6) -> bool:
    return all(torch.allclose(x, y, atol=atol) for x, y in zip(a, b, strict=True))


@pytest.fixture
def bank() -> SnapshotAdapters:
    adapters = SnapshotAdapters(dim=8, depth=3, num_tasks=4, bottleneck=2, dropout=0.0, scale=0.1, momentum=M)
    snaps = []
    for task in range(2):
        randomise(adapters.running, seed=task)
        snaps.append(values(adapters.running))
        adapters.snapshot(task)
    randomise(adapters.running, seed=7)
    adapters.expected_mean = [(a + b) / 2 for a, b in zip(*snaps)]  # S_1 / 2
    return adapters


def test_a_pull_is_the_written_out_update(bank):
    theta = values(bank.running)
    bank.pull(bank.running, 2)
    expected = [(1 - M) * t + M * c for t, c in zip(theta, bank.expected_mean)]
    assert close(values(bank.running), expected)
    before = values(bank.running)
    bank.pull(bank.running, 0)  # task 0 has no earlier snapshot: the identity
    assert close(values(bank.running), before, atol=0)


def test_snapshots_are_frozen_copies_and_sums_are_prefix_sums(bank):
    s0, s1 = (values(bank.sums.sets[k]) for k in range(2))
    t0, t1 = (values(bank.snapshots.sets[k]) for k in range(2))
    assert close(s0, t0, atol=0)
    assert close(s1, [a + b for a, b in zip(t0, t1)])
    assert not any(p.requires_grad for p in bank.snapshots.parameters())
    bank.pull(bank.running, 2)
    assert close(values(bank.snapshots.sets[1]), t1, atol=0), "a pull of theta must not touch the snapshots"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = compose_cfg(["method=mos", "dataset.num_tasks=5", "method.eval_inplace_drift=false",
                       "eval.max_samples_per_task=12"])
    run = ContinualRun(cfg, tmp_path_factory.mktemp("mos"))
    learner = run.learner
    # three "trained" tasks on random weights: theta, snapshots, sums, head and prototypes all non-trivial
    for task in range(3):
        randomise(learner.adapters.running, seed=10 + task)
        learner.adapters.snapshot(task)
    randomise(learner.adapters.running, seed=20)
    randomise(learner.head, seed=21)
    randomise(learner.prototype_head, seed=22)
    learner.eval_mode()
    return run


def images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("per_block", [True, False])
def test_the_training_forward_pulls_per_block_only_in_the_reference_mode(run, per_block):
    learner, task = run.learner, 2
    adapters = learner.adapters
    mean = [s / task for s in values(adapters.sums.sets[task - 1])]
    start = values(adapters.running)
    seen: dict[int, torch.Tensor] = {}
    hooks = [a.register_forward_hook(  # what each block's adapter computed with
        lambda mod, _args, _out, layer=int(i): seen.__setitem__(layer, mod.down.weight.detach().clone()))
        for i, a in adapters.running.adapters.items()]
    try:
        learner.running_features(images(), task, per_block)
    finally:
        for h in hooks:
            h.remove()
        after = values(adapters.running)
        with torch.no_grad():
            for p, v in zip(adapters.running.parameters(), start):
                p.copy_(v)
    depth = len(peft_blocks(learner.backbone))
    assert close(after, pulled(start, mean, depth if per_block else 0))
    for layer in range(depth):  # block l sees the set after l + 1 pulls (none in once_per_step)
        weight_index = 4 * layer  # down.weight of adapter l among the set's parameters
        want = pulled(start, mean, layer + 1 if per_block else 0)[weight_index]
        assert torch.allclose(seen[layer], want, atol=1e-6), layer


def test_one_pull_follows_every_optimiser_step(run):
    learner, task = run.learner, 2
    adapters = learner.adapters
    start = values(adapters.running)
    x = images(2)
    loss = learner.running_features(x, task, pulls=False).square().mean()
    loss.backward()
    grads = [p.grad.clone() for p in adapters.running.parameters()]
    optimizer = learner.optimizer(task)([{"params": list(adapters.running.parameters()), "lr": 0.5}])
    optimizer.step()
    after = values(adapters.running)
    with torch.no_grad():
        for p, v in zip(adapters.running.parameters(), start):
            p.copy_(v)
            p.grad = None
    wd = float(learner.method.weight_decay)
    stepped = [t - 0.5 * (g + wd * t) for t, g in zip(start, grads)]  # SGD's first step (momentum buffer = grad)
    mean = [s / task for s in values(adapters.sums.sets[task - 1])]
    assert close(after, pulled(stepped, mean, 1), atol=1e-5)


def test_adapters_with_zero_up_projection_leave_the_vit_unchanged(run):
    vit = run.learner.backbone
    fresh = AdapterSet.for_vit(vit, bottleneck=4, dropout=0.0, scale=0.1)
    with torch.no_grad():
        fresh.adapters["0"].down.weight.mul_(50)  # whatever the down projection
    x = images(2)
    with torch.no_grad():
        assert torch.equal(vit_features(vit, x, peft=fresh.plan()), vit_features(vit, x))
        randomise(fresh, seed=3)
        assert not torch.allclose(vit_features(vit, x, peft=fresh.plan()), vit_features(vit, x))


def test_refinement_follows_the_head_for_at_most_four_evaluations():
    # 3 tasks x 1 class; the head maps the features of adapter k to the class written in them
    class_to_task = torch.arange(3)
    features = torch.zeros(2, 3, 3)
    features[0, 0, 1] = features[0, 1, 1] = 1  # sample 0: 0 -> 1 -> 1 (stops after 2 evaluations)
    features[1, 0, 1] = features[1, 1, 0] = 1  # sample 1: 0 -> 1 -> 0 -> 1 ... cut after 4 evaluations
    calls = []

    def head(f):
        calls.append(1)
        return f * 10

    z, task = refine(head, features, torch.zeros(2, dtype=torch.long), class_to_task, 4)
    assert task.tolist() == [1, 1] and len(calls) == 4
    assert z[0].argmax() == 1 and z[1].argmax() == 0  # sample 1 keeps the 4th evaluation (on adapter 1)


def evaluator(run, batch: int, cache: bool = True) -> Evaluator:
    return Evaluator(run.benchmark, run.device, batch, cache=cache, progress=False, max_samples=12)


def test_frozen_snapshots_are_cached_and_a_changed_one_recomputed(run):
    learner = run.learner
    ev = evaluator(run, 5)
    for t in range(3):
        ev.evaluate(learner, t)
    # 3 test sets: a query step each (no ViT runs in it) + each adapter once per test set it meets: 3 + 3 * 3,
    # where the authors' code runs (T + 2) passes per test set and evaluation: 2 + 2 * 3 + 3 * 4 = 20
    assert ev.vit_passes == pytest.approx(3 + 9)
    before = ev.evaluate(learner, 2)
    assert ev.vit_passes == pytest.approx(12)
    snap = learner.adapters.snapshots.sets[1]
    saved = values(snap)
    try:
        randomise(snap, seed=99)  # adapter 1 changes: its features must be recomputed, nothing stale reused
        after = ev.evaluate(learner, 2)
        direct = evaluator(run, 5, cache=False).evaluate(learner, 2)
    finally:
        with torch.no_grad():
            for p, v in zip(snap.parameters(), saved):
                p.copy_(v)
    assert ev.vit_passes == pytest.approx(12 + 3)
    for a, b in zip(after.tasks, direct.tasks, strict=True):
        assert torch.equal(a.predictions, b.predictions)
    assert any(not torch.equal(a.predictions, b.predictions) for a, b in zip(after.tasks, before.tasks))


def test_corrected_predictions_do_not_depend_on_the_test_batch_size(run):
    learner = run.learner
    one, many = evaluator(run, 1, cache=False).evaluate(learner, 2), evaluator(run, 7).evaluate(learner, 2)
    for a, b in zip(one.tasks, many.tasks, strict=True):
        assert torch.equal(a.predictions, b.predictions)
        assert torch.equal(a.chosen_task, b.chosen_task)


def test_reference_drift_rewrites_the_stored_adapters_by_the_test_batch_count(run):
    learner = run.learner
    adapters = learner.adapters
    saved = {k: values(adapters.snapshots.sets[k]) for k in range(3)}
    depth = len(peft_blocks(learner.backbone))
    m = 0.01  # a slow pull, so that the two batch sizes leave visibly different adapters
    learner.drift, learner.eval_cacheable, adapters.momentum = True, False, m
    drifted = {}
    try:
        for batch in (1, 5):
            ev = evaluator(run, batch)
            ev.evaluate(learner, 2, point="drift")
            drifted[batch] = {k: values(adapters.snapshots.sets[k]) for k in range(3)}
            batches = sum(math.ceil(ev.test_count(t) / batch) for t in range(3))  # the test loaders' batches
            assert close(drifted[batch][0], saved[0], atol=0), "adapter 0 never drifts (no earlier snapshot)"
            for k in (1, 2):
                mean = [s / k for s in values(adapters.sums.sets[k - 1])]
                assert close(drifted[batch][k], pulled(saved[k], mean, depth * batches, m), atol=1e-5), (batch, k)
            with torch.no_grad():
                for k, vals in saved.items():
                    for p, v in zip(adapters.snapshots.sets[k].parameters(), vals):
                        p.copy_(v)
    finally:
        learner.drift, learner.eval_cacheable, adapters.momentum = False, True, M
        with torch.no_grad():
            for k, vals in saved.items():
                for p, v in zip(adapters.snapshots.sets[k].parameters(), vals):
                    p.copy_(v)
    assert not close(drifted[1][1], drifted[5][1], atol=1e-3), "the reference drift depends on the test batch size"


class _Ctx:
    """The part of a stage context the statistics stage uses."""

    def __init__(self, task: int) -> None:
        self.task, self.saved = task, {}

    def save_artifact(self, name: str, state: dict) -> None:
        self.saved[name] = state


@pytest.mark.parametrize("per_block", [True, False])
def test_class_statistics_snapshot_theta_then_pull_it_per_batch_only_in_the_reference_mode(run, per_block):
    learner, task = run.learner, 2
    adapters = learner.adapters
    saved = {name: values(module) for name, module in learner.modules().items()}
    theta = values(adapters.running)
    earlier_sum = values(adapters.sums.sets[task - 1])
    learner.per_block = per_block
    try:
        ctx = _Ctx(task)
        learner.class_statistics(ctx)
        snapshot, total, after = (values(adapters.snapshots.sets[task]), values(adapters.sums.sets[task]),
                                  values(adapters.running))
        # the authors' loaders: one per class, batches of 3 x train.batch_size, 12 pulls each
        batches = sum(len(learner.statistics_loader(task, [c], batch_size=3 * learner.batch_size))
                      for c in run.benchmark.task_classes[task])
    finally:
        learner.per_block = True
        with torch.no_grad():
            for name, module in learner.modules().items():
                for p, v in zip(module.parameters(), saved[name]):
                    p.copy_(v)
        learner.eval_mode()
    assert close(snapshot, theta, atol=0), "the snapshot is theta as training left it"
    assert close(total, [s + t for s, t in zip(earlier_sum, theta)])
    assert sorted(ctx.saved) == [f"mos_stats_task_{task}"]
    mean = [s / task for s in earlier_sum]
    depth = len(peft_blocks(learner.backbone))
    assert close(after, pulled(theta, mean, depth * batches if per_block else 0), atol=1e-5)


# the authors' JSONs (MOS:exps/mos_*.json; IN1K = augreg_in21k_ft_in1k, IN21K = augreg_in21k, identical but for
# backbone_type): tasks, epochs, lr, batch, wd, statistics. Omni with IN21K: 30/30, its log's header.
MOS_ROWS = {
    "cifar100": (20, 20, 0.03, 48, 5e-4, "covariance"),
    "cub": (20, 10, 0.01, 32, 5e-4, "covariance"),
    "imr": (10, 10, 0.05, 16, 5e-3, "covariance"),
    "imagenet_a": (10, 10, 0.05, 32, 5e-3, "variance"),
    "objectnet": (10, 10, 0.05, 48, 5e-3, "covariance"),
    "omnibenchmark": (15, 10, 0.01, 16, 5e-4, "covariance"),
    "vtab": (5, 20, 0.03, 32, 5e-3, "covariance"),
}


def test_presets_compose_to_the_authors_settings_under_the_pilot_protocol():
    from hydra import compose, initialize_config_dir

    from norga.config import register
    from tests.learning import CONF

    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for d, row in MOS_ROWS.items():
            for b in ("augreg_in21k", "augreg_in21k_ft_in1k"):
                cfg = compose(config_name="config", overrides=["protocol=pilot", f"dataset={d}", f"backbone={b}",
                                                               "method=mos"])
                m = cfg.method
                tasks = 10 if (d, b) == ("omnibenchmark", "augreg_in21k") else row[0]
                got = (cfg.dataset.num_tasks, cfg.train.epochs, m.lr, cfg.train.batch_size, m.weight_decay,
                       m.statistics)
                assert got == (tasks, *row[1:]), (d, b)
                assert cfg.eval.batch_size == cfg.train.batch_size  # the test batch the reference drift sees
                assert (m.bottleneck, m.adapter_momentum, m.reg, m.head_lr_factor, m.min_lr) == (16, 0.1, 0.1, 0.1, 0)
                assert (m.alignment.epochs, m.alignment.lr, m.alignment.samples_per_class_factor) == (30, 0.005, 5)
                assert (m.merge_mode, m.eval_inplace_drift, m.ensemble, m.max_evaluations) == (
                    "official_per_block", True, True, 4)
                assert cfg.dataset.normalize == "none" and cfg.dataset.class_order == "numpy_1993"
