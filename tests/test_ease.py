"""EASE's formulas on random weights (docs/algorithm.md#ease): the semantic-guided complement, the reweighted
per-block cosine, fresh adapters as the identity, the OmniBenchmark mode (E1), and evaluation that runs each
frozen adapter once per test set and does not depend on the test batch."""

import math

import pytest
import torch
import torch.nn.functional as F

from norga.engine.evaluate import Evaluator
from norga.engine.run import ContinualRun
from norga.methods.ease_head import SubspacePrototypes
from norga.models.vit import vit_features
from tests.learning import compose_cfg

TASKS = [[0, 1], [2, 3, 4], [5, 6]]  # class 7 is never seen


def random_head(use_ptm: bool = False, dim: int = 4) -> SubspacePrototypes:
    torch.manual_seed(0)
    head = SubspacePrototypes(TASKS, 8, dim, use_ptm)
    head.protos.normal_()
    return head


def cos(a, b):
    return float(F.cosine_similarity(a, b, dim=0))


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_complement_is_the_similarity_weighted_sum_of_newer_classes_over_the_whole_upper_triangle(tau):
    head = random_head()
    before = head.protos.clone()
    head.recompute_complement(2, tau)
    for i in range(2):                      # old task
        for k in range(i + 1, 3):           # newer subspace
            newer = [c for t in range(k, 3) for c in TASKS[t]]  # real prototypes in subspace k
            for c in TASKS[i]:
                w = torch.tensor([math.exp(cos(before[i, c], before[i, n]) / tau) for n in newer])
                w = w / w.sum()
                expected = sum(w[j] * before[k, n] for j, n in enumerate(newer))
                torch.testing.assert_close(head.protos[k, c], expected, rtol=1e-5, atol=1e-6)
    # real prototypes (class's own task and every subspace up to it) are never touched
    for t, classes in enumerate(TASKS):
        assert torch.equal(head.protos[: t + 1, classes], before[: t + 1, classes])


def test_without_recalc_only_the_newest_block_is_filled_from_the_current_tasks_classes():
    head = random_head()
    before = head.protos.clone()
    head.recompute_complement(2, 1.0, recalc_sim=False)
    for i in range(2):
        for c in TASKS[i]:
            w = torch.softmax(torch.tensor([cos(before[i, c], before[i, n]) for n in TASKS[2]]), dim=0)
            torch.testing.assert_close(head.protos[2, c], sum(w[j] * before[2, n] for j, n in enumerate(TASKS[2])))
    assert torch.equal(head.protos[1, TASKS[0]], before[1, TASKS[0]])  # left as it was


@pytest.mark.parametrize("use_ptm", [False, True])
def test_reweighted_logits_weight_own_subspace_1_others_alpha_over_t_and_the_ptm_beta(use_ptm):
    head = random_head(use_ptm)
    alpha, beta, upto = 0.3, 0.7, 2
    live = head.subspaces(upto)
    assert live == ([3] if use_ptm else []) + [0, 1, 2]  # PTM block first
    feats = torch.randn(5, len(live) * 4)
    logits = head(feats, upto, True, alpha, beta)
    task_of = {c: t for t, cs in enumerate(TASKS) for c in cs}
    for n in range(5):
        for c in task_of:
            expected = 0.0
            for b, s in enumerate(live):
                lam = beta if s == 3 and use_ptm else 1.0 if s == task_of[c] else alpha / upto
                expected += lam * cos(feats[n, 4 * b: 4 * b + 4], head.protos[s, c])
            assert float(logits[n, c]) == pytest.approx(expected, abs=1e-5)
    plain = head(feats, upto, False, alpha, beta)
    w = head.protos[live].permute(1, 0, 2).flatten(1)
    torch.testing.assert_close(plain, F.normalize(feats, dim=1) @ F.normalize(w, dim=1).T)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return ContinualRun(compose_cfg(["method=ease", "dataset.num_tasks=5", "method.bottleneck=4"]),
                        tmp_path_factory.mktemp("ease"))


def test_a_fresh_adapter_leaves_the_vit_output_unchanged_and_a_trained_one_does_not(run):
    learner = run.learner
    learner.grow(0)
    x = torch.rand(3, 3, 32, 32)
    plain = vit_features(learner.backbone, x)
    for mode in (True, False):  # dropout on the bottleneck cannot make a zero up-projection non-zero
        learner.bank.train(mode)
        assert torch.equal(vit_features(learner.backbone, x, peft=learner.bank.plan(0)), plain)
    assert learner.is_identity(0)
    torch.nn.init.normal_(learner.bank.sets[0].adapters["0"].up.weight)
    learner.bank.eval()
    assert not torch.equal(vit_features(learner.backbone, x, peft=learner.bank.plan(0)), plain)
    assert not learner.is_identity(0)


def randomised(learner, tasks: int):
    """Adapters 0..tasks-1 with random non-zero up-projections, random prototypes."""
    torch.manual_seed(1)
    learner.grow(tasks - 1)
    for s in learner.bank.sets:
        for a in s.adapters.values():
            torch.nn.init.normal_(a.up.weight, std=0.5)
    learner.head.protos.normal_()
    learner.eval_mode()
    return learner


def evaluator(run, cache=True, batch=16):
    return Evaluator(run.benchmark, run.device, batch, cache=cache, progress=False, max_samples=12)


def test_frozen_adapters_run_once_per_test_set_and_cached_equals_batch_by_batch(run):
    learner = randomised(run.learner, 5)
    ev, one, many = evaluator(run), evaluator(run, cache=False, batch=1), evaluator(run, cache=False, batch=5)
    for t in range(5):
        cached = ev.evaluate(learner, t)
        for other in (one.evaluate(learner, t), many.evaluate(learner, t)):  # batch 1 = batch N = cached
            for a, b in zip(cached.tasks, other.tasks, strict=True):
                assert torch.equal(a.predictions, b.predictions)
    # a query per test set + each (test set, adapter) pair once: 5 + 25; the authors' code runs T + 1 passes
    # per test image per evaluation: sum_t (t + 1)^2 = 55 test sets' worth
    assert ev.vit_passes == pytest.approx(5 + 25)
    # an adapter that changes is recomputed, never reused stale
    torch.nn.init.normal_(learner.bank.sets[4].adapters["0"].up.weight, std=0.5)
    after, direct = ev.evaluate(learner, 4), evaluator(run, cache=False).evaluate(learner, 4)
    for a, b in zip(after.tasks, direct.tasks, strict=True):
        assert torch.equal(a.predictions, b.predictions)


def test_omni_mode_is_aper_ptm_and_adapter_0_plain_cosine_later_adapters_untrained(tmp_path):
    learner = ContinualRun(compose_cfg(["method=ease", "dataset.num_tasks=5", "method.bottleneck=4",
                                        "method.moni_adam=true"]), tmp_path).learner
    assert learner.use_ptm and (learner.alpha, learner.beta) == (1.0, 1.0) and not learner.reweight
    assert [s.name for s in learner.stages(0)][0] == "adapter"
    assert "adapter" not in [s.name for s in learner.stages(1)]
    learner.grow(2)
    assert learner.is_identity(1) and learner.features_version((1,)) == "frozen"
    x = torch.rand(2, 3, 32, 32)
    q = learner.query(x)
    assert torch.equal(learner.features(x, torch.full((2, 1), 2), q), q)  # an untrained adapter = the PTM
    assert learner.select(q, 2).tolist() == [[5, 0, 1, 2]] * 2           # PTM block first


# the authors' JSONs (Ease:exps/ease_*.json; IN1K = augreg_in21k_ft_in1k, IN21K = augreg_in21k):
# tasks, epochs, lr, batch, wd, optimizer, ffn_num, alpha, use_init_ptm, beta, moni_adam
EASE_ROWS = {
    ("cifar100", "both"): (20, 20, 0.025, 48, 5e-4, "sgd", 64, 0.1, False, 0.0, False),
    ("cub", "augreg_in21k_ft_in1k"): (20, 20, 0.005, 16, 5e-4, "sgd", 64, 0.005, True, 1.0, False),
    ("cub", "augreg_in21k"): (20, 20, 0.008, 32, 5e-4, "sgd", 64, 0.05, False, 0.0, False),
    ("imagenet_a", "both"): (10, 20, 0.05, 32, 5e-3, "sgd", 64, 0.1, False, 0.0, False),
    ("imr", "both"): (10, 20, 0.05, 16, 5e-3, "sgd", 64, 0.1, False, 0.0, False),
    ("objectnet", "augreg_in21k_ft_in1k"): (20, 20, 0.03, 48, 5e-3, "adam", 64, 0.1, False, 0.0, False),
    ("objectnet", "augreg_in21k"): (20, 25, 0.05, 48, 5e-3, "sgd", 64, 0.2, False, 0.0, False),
    ("omnibenchmark", "both"): (10, 20, 0.01, 16, 5e-4, "sgd", 64, 1.0, True, 1.0, True),
    ("vtab", "both"): (5, 45, 0.03, 16, 5e-3, "sgd", 16, 0.1, False, 0.0, False),
}


def test_presets_compose_to_the_authors_settings_under_the_pilot_protocol():
    from hydra import compose, initialize_config_dir

    from norga.config import register
    from tests.learning import CONF

    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for (d, which), row in EASE_ROWS.items():
            for b in (("augreg_in21k", "augreg_in21k_ft_in1k") if which == "both" else (which,)):
                cfg = compose(config_name="config", overrides=["protocol=pilot", f"dataset={d}", f"backbone={b}",
                                                               "method=ease"])
                m = cfg.method
                got = (cfg.dataset.num_tasks, cfg.train.epochs, m.lr, cfg.train.batch_size, m.weight_decay, m.optimizer,
                       m.bottleneck, m.alpha, m.use_init_ptm, m.beta, m.moni_adam)
                assert got == row, (d, b)
                assert (m.min_lr, m.recalc_sim, m.use_reweight, m.complement_tau) == (0.0, True, True, 1.0)
                assert (cfg.dataset.class_order, cfg.dataset.normalize) == ("numpy_1993", "none")
