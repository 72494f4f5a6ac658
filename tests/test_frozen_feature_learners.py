"""SimpleCIL and RanPAC: the classifiers on hand-made tensors (prototypes and cosine logits, the ridge on a
singular Gram matrix, independence from the order features arrive in), the first-session adapters, and
end-to-end runs on the learning fixture (``tests/learning.py``): above chance, batch-size independent,
lambda chosen from training data only, resumed runs equal to uninterrupted ones, and the joint bound."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class

from norga.config import register
from norga.data import build_benchmark
from norga.engine import evaluate, loops
from norga.engine import run as engine_run
from norga.engine.options import refuse_untaken_options
from norga.engine.run import ContinualRun
from norga.methods.ranpac import RidgeStatistics, ridge_solve, select_ridge
from norga.methods.simplecil import PrototypeHead
from norga.models.peft import ParallelAdapters
from norga.models.vit import build_frozen_backbone, vit_features
from tests.learning import CONF, LEARN, learned_state, with_logger

# The fixture with 20 training images per class for the class statistics (prototypes, G and Q: the runs' main
# cost); RanPAC with a small projection and a short adaptation.
BASE = [*LEARN, "train.max_stats_per_class=20"]
RANPAC = ["method=ranpac", "method.projection_dim=256", "method.first_session_adaptation=true",
          "method.adaptation.epochs=2", "method.adaptation.lr=0.05", "train.max_batches=2",
          "eval.max_samples_per_task=30"]


def compose_cfg(overrides=()):
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=with_logger(BASE + list(overrides)))


def assert_learns(metrics: dict) -> None:
    """Far above chance (10 %); these learners identify no task."""
    assert metrics["final_avg_acc"] > 60, metrics["acc_matrix"]
    assert all(a is None for row in metrics["tii_acc_matrix"] for a in row)


def first_test_images(run, task=0, n=8):
    return torch.stack([run.benchmark.test_set(task)[i][0] for i in range(n)])


# ---- SimpleCIL's head ---------------------------------------------------------------------------------------
def test_simplecil_prototypes_and_cosine_logits_by_hand():
    head = PrototypeHead(num_classes=3, dim=2)
    head.fit(torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]]), torch.tensor([0, 0, 2, 2]))
    # class 0: mean (2, 0); class 2: mean (0, 3); class 1 never seen: zero
    assert torch.equal(head.prototypes, torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]]))
    logits = head(torch.tensor([[3.0, 4.0], [-1.0, 0.0]]))
    # cosine, scale 1: (3, 4) / 5 against e1 and e2; the zero prototype scores 0
    assert torch.allclose(logits, torch.tensor([[0.6, 0.0, 0.8], [-1.0, 0.0, 0.0]]))
    # a later task adds its classes and leaves earlier prototypes as they were
    head.fit(torch.tensor([[5.0, 5.0]]), torch.tensor([1]))
    assert torch.equal(head.prototypes[[0, 2]], torch.tensor([[2.0, 0.0], [0.0, 3.0]]))


def test_simplecil_prototypes_do_not_depend_on_sample_order():
    gen = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(200, 16, generator=gen) * 30, torch.randint(0, 5, (200,), generator=gen)
    first, second = labels < 3, labels >= 3  # two tasks: classes 0-2, then 3-4
    a, b = PrototypeHead(5, 16), PrototypeHead(5, 16)
    a.fit(feats[first], labels[first])
    a.fit(feats[second], labels[second])
    perm = torch.randperm(200, generator=gen)  # the other task order, and each task's samples permuted
    b.fit(feats[perm][second[perm]], labels[perm][second[perm]])
    b.fit(feats[perm][first[perm]], labels[perm][first[perm]])
    assert torch.allclose(a.prototypes, b.prototypes, rtol=0, atol=1e-5)
    test = torch.randn(50, 16, generator=gen) * 30
    assert torch.equal(a(test).argmax(1), b(test).argmax(1))


# ---- RanPAC's ridge -----------------------------------------------------------------------------------------
def hidden_features(n, m, seed=0, classes=4):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=gen)
    centres = torch.randn(classes, 12, generator=gen) * 3
    feats = centres[labels] + torch.randn(n, 12, generator=gen)
    return torch.relu(feats @ torch.randn(12, m, generator=gen)), labels


@pytest.mark.parametrize("n, m", [(12, 64), (300, 40)])  # M above and below the sample count (both forms)
def test_ridge_on_a_singular_gram_matrix_is_finite(n, m):
    hidden, labels = hidden_features(n, m)
    hidden[:, :5] = 0  # units the ReLU silences for every sample
    hidden[:, 5:10] = hidden[:, 10:15]  # duplicated features
    hidden, labels = torch.cat([hidden, hidden]), torch.cat([labels, labels])  # duplicated samples
    targets = torch.nn.functional.one_hot(labels, 4).double()
    lam, losses = select_ridge(hidden, targets, [10.0**k for k in range(-8, 9)], 0.8)
    assert torch.isfinite(losses).all() and lam in [10.0**k for k in range(-8, 9)]
    stats = RidgeStatistics(m, 4, torch.device("cpu"))
    stats.add(hidden, labels)
    assert torch.linalg.matrix_rank(stats.gram) <= min(n, m - 10)
    for lam in (1e-8, 1.0, 1e8):
        weight = stats.solve(lam)
        assert torch.isfinite(weight).all(), lam
    # the smallest lambda nearly interpolates the (consistent) training targets
    assert (hidden.double() @ stats.solve(1e-8).T).argmax(1).eq(labels).float().mean() > 0.95


def test_ridge_solve_fallback_equals_cholesky(monkeypatch):
    hidden, labels = hidden_features(50, 30)
    stats = RidgeStatistics(30, 4, torch.device("cpu"))
    stats.add(hidden, labels)
    direct = ridge_solve(stats.gram, stats.moments, 1.0)
    # a Cholesky that reports the matrix as indefinite sends the solve to the eigendecomposition
    real = torch.linalg.cholesky_ex
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda a: (real(a)[0], torch.tensor(1)))
    fallback = ridge_solve(stats.gram, stats.moments, 1.0)
    assert torch.allclose(direct, fallback, rtol=1e-9, atol=1e-12)
    expected = torch.linalg.solve(stats.gram + torch.eye(30, dtype=torch.float64), stats.moments)
    assert torch.allclose(direct, expected, rtol=1e-9, atol=1e-12)


def test_ridge_selection_equals_the_primal_solve():
    """The eigendecomposition gives, for each lambda, the error of solve(H^T H + lambda I, H^T Y)."""
    hidden, labels = hidden_features(100, 30)
    targets = torch.nn.functional.one_hot(labels, 4).double()
    grid = [1e-2, 1.0, 1e2, 1e4]
    _, losses = select_ridge(hidden, targets, grid, 0.8)
    h, fit = hidden.double(), 80
    eye = torch.eye(30, dtype=torch.float64)
    for lam, loss in zip(grid, losses):
        w = torch.linalg.solve(h[:fit].T @ h[:fit] + lam * eye, h[:fit].T @ targets[:fit])
        assert loss.item() == pytest.approx((h[fit:] @ w - targets[fit:]).pow(2).mean().item(), rel=1e-8)


def test_ridge_head_does_not_depend_on_the_order_features_were_accumulated():
    tasks = [hidden_features(80, 48, seed=s) for s in range(3)]
    tasks = [(h, y + 4 * t) for t, (h, y) in enumerate(tasks)]  # task t holds classes 4t..4t+3
    in_order = RidgeStatistics(48, 12, torch.device("cpu"))
    for h, y in tasks:
        in_order.add(h, y)
    shuffled = RidgeStatistics(48, 12, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    for h, y in reversed(tasks):
        perm = torch.randperm(len(h), generator=gen)
        for rows in perm.split(17):  # and in other chunks
            shuffled.add(h[rows], y[rows])
    w_a, w_b = in_order.solve(10.0), shuffled.solve(10.0)
    assert torch.allclose(w_a, w_b, rtol=1e-9, atol=1e-12)
    test = torch.cat([h[:20] for h, _ in tasks]).double()
    assert torch.equal((test @ w_a.T).argmax(1), (test @ w_b.T).argmax(1))


# ---- configuration errors -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def benchmark_and_backbone():
    cfg = compose_cfg(["method=simplecil"])
    return build_benchmark(cfg.dataset, cfg.backbone.img_size, cfg.seed), build_frozen_backbone(cfg.backbone)


@pytest.mark.parametrize("overrides, key", [
    (["method=simplecil", "gate=tanh"], "method.gate"),
    (["method=ranpac", "gate=tanh"], "method.gate"),
    (["method=ranpac", "method.projection_dim=0"], "method.projection_dim"),
    (["method=ranpac", "method.ridge_grid=[]"], "method.ridge_grid"),
    (["method=ranpac", "method.ridge_grid=[1.0,-1.0]"], "method.ridge_grid"),
    (["method=ranpac", "method.ridge_fit_fraction=1.0"], "method.ridge_fit_fraction"),
    (["method=simplecil", "method.batchwise_prompt=true"], "method.batchwise_prompt"),
])
def test_wrong_settings_fail_naming_the_key(overrides, key, benchmark_and_backbone):
    benchmark, backbone = benchmark_and_backbone
    cfg = compose_cfg(overrides)
    learner = get_class(cfg.method._target_)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        # as the engine builds a learner: the options it does not declare are refused first
        refuse_untaken_options(learner, cfg.method)
        learner(cfg, backbone, benchmark, torch.device("cpu"))


@pytest.mark.parametrize("dataset, adapted", [("cifar100", True), ("imr", False)])
def test_paper_presets_compose_to_the_authors_settings(dataset, adapted):
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"dataset={dataset}", "backbone=sup21k", "method=ranpac"])
    m = cfg.method
    assert (m.projection_dim, m.ridge_fit_fraction, cfg.train.batch_size) == (10000, 0.8, 48)
    assert m.ridge_grid == [10.0**k for k in range(-8, 9)]
    # the adapter on CIFAR-100; the authors' ImageNet-R adaptation is SSF, which norga does not implement
    assert m.first_session_adaptation == adapted
    a = m.adaptation
    assert (a.epochs, a.lr, a.momentum, a.weight_decay, a.min_lr) == (20, 0.01, 0.9, 5e-4, 0.0)
    assert (a.bottleneck, a.dropout, a.scale) == (64, 0.1, 0.1)


# ---- first-session adapters ---------------------------------------------------------------------------------
def test_new_adapters_leave_the_backbone_unchanged():
    cfg = compose_cfg(RANPAC)
    vit, plain = build_frozen_backbone(cfg.backbone), build_frozen_backbone(cfg.backbone)
    adapters = ParallelAdapters(vit, 8, 0.1, 0.1)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(vit_features(vit, x), vit_features(plain, x))
        torch.nn.init.normal_(adapters.adapters["2"].up.weight)  # a trained adapter does change them
        assert not torch.allclose(vit_features(vit, x), vit_features(plain, x))
        adapters.remove()
        assert torch.equal(vit_features(vit, x), vit_features(plain, x))


# ---- end to end on the learning fixture ---------------------------------------------------------------------
def assert_batch_independent(run):
    learner = run.learner
    learner.eval_mode()
    x = first_test_images(run).to(run.device)
    with torch.no_grad():
        batched = learner.logits(learner.features(None, None, learner.query(x)), 1)
        single = torch.cat([learner.logits(learner.features(None, None, learner.query(x[i:i + 1])), 1)
                            for i in range(len(x))])
    assert torch.equal(batched.argmax(1), single.argmax(1))
    assert torch.allclose(batched, single, atol=1e-5)
    # logits over the seen classes only
    assert torch.isfinite(batched[:, run.benchmark.seen_mask(1)]).all()


def test_simplecil_learns_and_predicts_per_sample(tmp_path):
    run = ContinualRun(compose_cfg(["method=simplecil"]), tmp_path)
    metrics = run.run()
    assert_learns(metrics)
    assert metrics["num_tasks"] == 2 and metrics["bound"] is None
    assert_batch_independent(run)
    # after task 0 the classes of task 1 are out of the argmax
    x = first_test_images(run).to(run.device)
    with torch.no_grad():
        after_0 = run.learner.logits(run.learner.query(x), 0)
    assert torch.isinf(after_0[:, run.benchmark.class_mask(1)]).all()


class Crash(Exception):
    pass


def crash_at(monkeypatch, point):
    """Make the crash drill at ``point`` raise here instead of killing the process (in-process resume)."""
    def maybe_crash(p):
        if p == point:
            raise Crash(p)
    for module in (engine_run, loops, evaluate):
        monkeypatch.setattr(module, "maybe_crash", maybe_crash)


@pytest.fixture(scope="module")
def ranpac_run(tmp_path_factory):
    """RanPAC with the first-session adapters, task by task, with the adapters and query versions recorded."""
    run_dir = tmp_path_factory.mktemp("ranpac")
    run = ContinualRun(compose_cfg(RANPAC), run_dir)
    learner = run.learner
    record = {"versions": [learner.query_version()], "stages": [[s.name for s in learner.stages(t)] for t in (0, 1)]}
    for task in range(2):
        run.run_task(task)
        record[f"adapters_{task}"] = {k: v.clone() for k, v in learner.adapters.state_dict().items()}
        record["versions"].append(learner.query_version())
    return run, run_dir, record, run.metrics(finished=True)


def test_ranpac_learns_and_predicts_per_sample(ranpac_run):
    run, _, _, metrics = ranpac_run
    assert_learns(metrics)
    assert_batch_independent(run)
    assert (run.learner.head.ridges > 0).all()


def test_only_task_0_trains_the_adapters(ranpac_run):
    run, _, record, _ = ranpac_run
    assert record["stages"] == [["adaptation", "ridge", "evaluate"], ["ridge", "evaluate"]]
    up = [v for k, v in record["adapters_0"].items() if k.endswith("up.weight")]
    assert all(w.abs().sum() > 0 for w in up), "the zero up-projections did not train in task 0"
    assert all(torch.equal(v, record["adapters_1"][k]) for k, v in record["adapters_0"].items())
    assert not any(p.requires_grad for p in run.learner.adapters.parameters())
    # the query changes with the adaptation, and only then (the evaluator re-extracts it)
    initial, after_0, after_1 = record["versions"]
    assert initial != after_0 == after_1


def test_ridge_is_chosen_from_training_data_only(ranpac_run, tmp_path):
    _, run_dir, _, metrics = ranpac_run
    other = ContinualRun(compose_cfg([*RANPAC, "eval.max_samples_per_task=15"]), tmp_path)
    other_metrics = other.run()
    assert other_metrics["acc_matrix"] != metrics["acc_matrix"], "the test sets did not change"
    ours, theirs = learned_state(run_dir, 1), learned_state(tmp_path, 1)
    assert torch.equal(ours["head.ridges"], theirs["head.ridges"])
    assert torch.equal(ours["head.weight"], theirs["head.weight"])


def test_killed_and_resumed_ranpac_equals_uninterrupted(ranpac_run, tmp_path, monkeypatch):
    """Killed mid-adaptation and again before task 1's ridge (G and Q rebuilt from the task-0 artifacts)."""
    _, run_dir, _, metrics = ranpac_run
    for point in ("task0/adaptation/epoch1/step1", "task1/ridge/start"):
        crash_at(monkeypatch, point)
        with pytest.raises(Crash):
            ContinualRun(compose_cfg([*RANPAC, "resume=true"]), tmp_path).run()
    monkeypatch.undo()
    resumed = ContinualRun(compose_cfg([*RANPAC, "resume=true"]), tmp_path).run()
    assert resumed["acc_matrix"] == metrics["acc_matrix"]
    for task in (0, 1):
        ours, theirs = learned_state(run_dir, task), learned_state(tmp_path, task)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), task


def test_joint_bound_is_one_task_and_labelled(tmp_path):
    # without the fixture's dataset.num_tasks=2, which as a command-line value would win over the bound's 1
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=with_logger(
            [o for o in BASE if not o.startswith("dataset.num_tasks")] + ["method=simplecil", "+bound=joint"]))
    metrics = ContinualRun(cfg, tmp_path).run()
    assert metrics["bound"] == "joint" and metrics["num_tasks"] == 1 and len(metrics["acc_matrix"]) == 1
    assert metrics["final_avg_acc"] > 60
    assert json.loads((tmp_path / "metrics.json").read_text())["bound"] == "joint"
