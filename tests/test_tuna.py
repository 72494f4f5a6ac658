"""TUNA's formulas on random weights (docs/algorithm.md#tuna): the EMR elect step, CosFace, the decay of the
class means (reference and intended), adapters with a zero up-projection, batch 1 = batch N, and the O(T)
cost of evaluating with frozen snapshots cached."""

import pytest
import torch
import torch.nn.functional as F

from norga.engine.evaluate import Evaluator
from norga.engine.run import ContinualRun
from norga.methods.tuna import cosface_logits, decay_scales, orth_loss
from norga.models.peft import AdapterSet
from norga.models.tuna import elect_into, emr_elect
from tests.learning import compose_cfg


def test_emr_elect_is_the_written_rule_on_a_hand_made_example():
    thetas = [torch.tensor([1.0, -2.0, 0.5, 3.0]), torch.tensor([-3.0, 1.0, 0.0, 1.0]),
              torch.tensor([4.0, -1.0, -0.5, -5.0])]
    # means (2/3, -2/3, 0, -1/3): flags (+, -, - (0 -> -1), -); the largest agreeing magnitude, signed by the flag
    assert torch.equal(emr_elect(thetas), torch.tensor([4.0, -2.0, -0.5, -5.0]))


def test_elect_into_merges_every_tensor_of_the_adapter_sets():
    torch.manual_seed(0)
    sets = [AdapterSet(8, 2, 3, 0.1, 0.1) for _ in range(3)]
    for s in sets:
        for p in s.parameters():
            p.data.normal_()
    merged = AdapterSet(8, 2, 3, 0.1, 0.1)
    elect_into(merged, sets)
    for name, value in merged.state_dict().items():
        stack = torch.stack([s.state_dict()[name] for s in sets])
        flag = torch.where(stack.mean(0) > 0, 1.0, -1.0)
        expected = torch.where(stack * flag > 0, stack.abs(), torch.zeros(())).amax(0) * flag
        assert torch.equal(value, expected), name


def test_cosface_loss_is_the_written_formula():
    torch.manual_seed(1)
    cos = torch.rand(6, 5) * 2 - 1
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    s, m = 20.0, 0.3
    num = s * (cos[torch.arange(6), y] - m)
    others = torch.stack([torch.cat([cos[i, :y[i]], cos[i, y[i] + 1:]]) for i in range(6)])
    written = -(num - torch.log(torch.exp(num) + torch.exp(s * others).sum(1))).mean()
    assert F.cross_entropy(cosface_logits(cos, y, s, m), y).item() == pytest.approx(written.item(), rel=1e-5)
    assert F.cross_entropy(cosface_logits(cos, y, s, 0.0), y).item() < written.item()  # the margin costs


def test_decay_rules_give_the_listed_scales():
    # T = 2, three tasks of two classes (positions 0..5)
    task_of = [0, 0, 1, 1, 2, 2]
    intended = decay_scales(range(6), task_of, 2, 2, "intended")
    assert intended == pytest.approx([0.9 + 0.1 / 3] * 2 + [0.9 + 0.2 / 3] * 2 + [1.0] * 2)
    # the reference floor-divides the position by -task_size: class 0 one step up, the first class of each
    # later task one step above the rest of it, the newest classes shrunk most
    reference = decay_scales(range(6), task_of, 2, 2, "reference")
    assert reference == pytest.approx([0.9 + 0.1 / 3, 0.9, 0.9, 0.9 - 0.1 / 3, 0.9 - 0.1 / 3, 0.9 - 0.2 / 3])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = compose_cfg(["method=tuna", "dataset.num_tasks=5", "method.universal=emr_merged"])
    return ContinualRun(cfg, tmp_path_factory.mktemp("tuna"))


def randomise(learner, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in learner.modules().values():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    learner.eval_mode()


def images(run, n: int = 8) -> torch.Tensor:
    data = run.benchmark.test_set(0)
    return torch.stack([data[i][0] for i in range(n)])


def test_zero_up_adapters_leave_the_vit_output_unchanged(run):
    learner = run.learner
    randomise(learner)
    x = images(run)
    plain = learner.backbone_features(x)
    assert not torch.allclose(learner.features(x, torch.zeros(len(x), 1, dtype=torch.long), None), plain)
    with torch.no_grad():
        for adapter in learner.snapshots.sets[0].adapters.values():
            adapter.up.weight.zero_()
            adapter.up.bias.zero_()
    assert torch.allclose(learner.features(x, torch.zeros(len(x), 1, dtype=torch.long), None), plain, atol=1e-6)


def predictions(learner, x, upto_task: int) -> torch.Tensor:
    ids = learner.select(learner.query(x), upto_task)
    feats = torch.cat([learner.features(x, ids[:, j:j + 1], None) for j in range(ids.shape[1])], dim=1)
    return learner.logits(feats, upto_task)


@pytest.mark.parametrize("universal", ["official_cur_adapter", "emr_merged"])
def test_batch_of_one_equals_batch_of_n(run, universal):
    learner = run.learner
    randomise(learner, 1)
    learner.method.universal = universal
    x = images(run)
    together = predictions(learner, x, 2)
    alone = torch.cat([predictions(learner, x[i:i + 1], 2) for i in range(len(x))])
    assert torch.equal(together.argmax(1), alone.argmax(1))
    assert torch.allclose(together, alone, atol=1e-5)
    learner.method.universal = "emr_merged"


def test_prediction_is_the_entropy_chosen_adapter_plus_the_universal_one(run):
    learner = run.learner
    randomise(learner, 2)
    x = images(run, 4)
    seen = learner.benchmark.seen_mask(1)
    z = [learner.heads(learner.features(x, torch.full((4, 1), i), None))[:, seen] for i in (0, 1, 5)]
    p = [zi.softmax(1) for zi in z[:2]]
    h = torch.stack([-(pi * torch.log(pi + 1e-10)).sum(1) for pi in p])
    best = torch.where((h[0] <= h[1]).unsqueeze(1), p[0], p[1])
    assert torch.allclose(predictions(learner, x, 1)[:, seen], best + z[2].softmax(1), atol=1e-6)


@pytest.mark.parametrize(("universal", "passes"), [("emr_merged", 5 + 25 + 14), ("official_cur_adapter", 5 + 25)])
def test_vit_passes_grow_linearly_with_the_tasks(run, universal, passes):
    """5 tasks: a placeholder query per test set, each frozen snapshot once per test set, the universal adapter
    (new every task) once per test set and task; the official code runs T + 2 passes per image each time
    (1 + 6 + 12 + 20 + 30 = 69)."""
    learner = run.learner
    randomise(learner, 3)
    learner.method.universal = universal
    ev = Evaluator(run.benchmark, run.device, 16, progress=False, max_samples=10)
    for t in range(5):
        with torch.no_grad():
            learner.merged.adapters["0"].up.bias.add_(1.0)  # a new universal adapter every task
        ev.evaluate(learner, t)
    assert ev.vit_passes == pytest.approx(passes)
    # a snapshot that changes (the reference's orthogonality term trains them) is recomputed, not reused
    with torch.no_grad():
        learner.snapshots.sets[1].adapters["0"].up.weight.add_(0.5)
    cached = ev.evaluate(learner, 4)
    direct = Evaluator(run.benchmark, run.device, 16, cache=False, progress=False, max_samples=10).evaluate(learner, 4)
    assert cached.accs == direct.accs
    for a, b in zip(cached.tasks, direct.tasks, strict=True):
        assert torch.equal(a.predictions, b.predictions)
    learner.method.universal = "emr_merged"


def test_orthogonality_term_is_the_written_formula_and_reaches_the_snapshots_in_the_reference(run):
    learner = run.learner
    randomise(learner, 4)
    theta, earlier = learner.theta, list(learner.snapshots.sets[:2])
    layers = theta.layers
    written = sum(abs((F.normalize(theta.adapters[str(i)].up.weight, dim=1)
                       @ F.normalize(e.adapters[str(i)].up.weight, dim=1).T).mean()) / len(layers)
                  for e in earlier for i in layers)
    assert orth_loss(theta, earlier, detach=True).detach().item() == pytest.approx(float(written.detach()), rel=1e-5)
    learner.method.use_orth = True
    ups = {id(a.up.weight) for k in range(2) for a in learner.snapshots.sets[k].adapters.values()}
    assert ups <= {id(p) for p in learner.trainable(2)}  # the reference: earlier up-projections train too
    learner.method.orth_trains_snapshots = False
    assert not ups & {id(p) for p in learner.trainable(2)}
    learner.method.orth_trains_snapshots = True
    learner.method.use_orth = False
    learner.snapshots.requires_grad_(False)


# TUNA:exps/tuna_{cifar,imga,imgr,obj}.json @77d4f10 (all IN21K): tasks, epochs, lr, batch, use_orth (CIFAR: its
# log's true, the JSON says false), crct_epochs, ca_lr, decay, margin
TUNA_ROWS = {
    "cifar100": (20, 15, 0.01, 16, True, 30, 0.005, False, 0.0),
    "imagenet_a": (10, 20, 0.01, 16, True, 10, 0.01, True, 0.3),
    "imr": (10, 10, 0.02, 32, True, 30, 0.005, True, 0.0),
    "objectnet": (10, 10, 0.05, 48, True, 30, 0.001, True, 0.0),
}


def test_presets_compose_to_the_authors_settings_under_the_pilot_protocol():
    from hydra import compose, initialize_config_dir

    from norga.config import register
    from tests.learning import CONF

    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for d, row in TUNA_ROWS.items():
            cfg = compose(config_name="config", overrides=["protocol=pilot", f"dataset={d}", "backbone=augreg_in21k",
                                                           "method=tuna"])
            m = cfg.method
            got = (cfg.dataset.num_tasks, cfg.train.epochs, m.lr, cfg.train.batch_size, m.use_orth, m.alignment.epochs,
                   m.alignment.lr, m.decay, m.margin)
            assert got == row, d
            assert (m.bottleneck, m.weight_decay, m.reg, m.scale, m.statistics, cfg.dataset.normalize) == (
                16, 5e-4, 0.001, 20.0, "covariance", "none")
            assert (m.universal, m.decay_rule, m.alignment.cosine_period) == ("official_cur_adapter", "reference", 5)


def test_statistics_sampling_scales_the_class_means():
    from norga.methods.statistics import ClassStatistics

    stats = ClassStatistics("covariance")
    gen = torch.Generator().manual_seed(5)
    stats.fit(torch.randn(40, 6, generator=gen) + 3.0, torch.tensor([0, 1]).repeat_interleave(20))
    torch.manual_seed(0)
    plain, _ = stats.sample([0, 1], 7)
    torch.manual_seed(0)
    scaled, _ = stats.sample([0, 1], 7, {0: 0.5, 1: 1.25})
    shift = torch.cat([stats.means[0] * -0.5, stats.means[1] * 0.25]).repeat_interleave(7, dim=0)
    assert torch.allclose(scaled - plain, shift, atol=1e-5)


@pytest.mark.parametrize(("period", "last_lr"), [(5, 0.01), (None, 0.0)])
def test_alignment_cosine_restarts_with_the_reference_period(run, period, last_lr):
    """T3: T_max = 5 over 10 epochs ends back at the top (lr 0.01); T_max = crct_epochs ends at 0."""
    from norga.engine.stages import StageContext

    learner = run.learner
    randomise(learner, 5)
    seen = learner.seen_classes(1)
    gen = torch.Generator().manual_seed(6)
    labels = torch.tensor(seen).repeat_interleave(8)
    learner.statistics.fit(torch.randn(len(labels), learner.dim, generator=gen), labels)
    m = learner.method
    m.alignment.cosine_period, m.alignment.epochs, m.alignment.lr = period, 10, 0.01
    before = [w.detach().clone() for w in learner.heads.heads]
    ctx = StageContext(task=1, stage="align", seed=learner.cfg.seed, progress=False)
    learner.align(ctx)
    assert ctx.scheduler.get_last_lr()[0] == pytest.approx(last_lr, abs=1e-9)
    moved = [not torch.equal(w, b) for w, b in zip(learner.heads.heads, before)]
    assert moved == [True, True, False, False, False]  # every seen task's head aligns, no later one
    m.alignment.cosine_period, m.alignment.epochs, m.alignment.lr = 5, 30, 0.005
