"""APER with adapters on random weights (docs/algorithm.md#aper): features are [frozen PTM; adapted ViT],
prototypes are their class means, logits one cosine over the seen classes; two passes per test image, each
computed once per test set, and predictions independent of the test batch."""

import pytest
import torch
import torch.nn.functional as F

from norga.engine.evaluate import Evaluator
from norga.engine.run import ContinualRun
from norga.models.vit import vit_features
from tests.learning import compose_cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return ContinualRun(compose_cfg(["method=aper", "dataset.num_tasks=5", "method.bottleneck=4"]),
                        tmp_path_factory.mktemp("aper"))


def test_features_are_the_ptm_and_the_adapted_vit_and_logits_one_cosine(run):
    learner = run.learner
    torch.manual_seed(0)
    for a in learner.adapters.adapters.values():
        torch.nn.init.normal_(a.up.weight, std=0.5)
    learner.eval_mode()
    x = torch.rand(3, 3, 32, 32)
    q = learner.query(x)
    feats = learner.features(x, learner.select(q, 0), q)
    adapted = vit_features(learner.backbone, x, peft=learner.adapters.plan())
    torch.testing.assert_close(feats, torch.cat([vit_features(learner.backbone, x), adapted], dim=1))
    assert not torch.allclose(adapted, q)
    learner.head.prototypes.normal_()
    seen = learner.benchmark.seen_classes(1)
    logits = learner.logits(feats, 1)
    expected = F.normalize(feats, dim=1) @ F.normalize(learner.head.prototypes[seen], dim=1).T
    torch.testing.assert_close(logits[:, seen], expected)
    assert torch.isinf(logits).sum() == 3 * (learner.benchmark.num_classes - len(seen))  # unseen: -inf


def test_two_passes_per_test_set_and_batch_1_equals_batch_n(run):
    learner = run.learner
    learner.head.prototypes.normal_()
    learner.eval_mode()
    ev = Evaluator(run.benchmark, run.device, 16, progress=False, max_samples=12)
    one = Evaluator(run.benchmark, run.device, 1, cache=False, progress=False, max_samples=12)
    for t in range(5):
        a, b = ev.evaluate(learner, t), one.evaluate(learner, t)
        for x, y in zip(a.tasks, b.tasks, strict=True):
            assert torch.equal(x.predictions, y.predictions)
    # the query (PTM) and the adapted pass once per test set: 5 + 5 (the authors': 2 per image per evaluation,
    # sum_t 2 (t + 1) = 30 test sets' worth)
    assert ev.vit_passes == pytest.approx(10)


# RCIL:exps/aper_adapter/*_vit-b_adapter.json (IN21K) and PILOT's two IN1K configs:
# tasks, epochs, lr, batch, wd
APER_ROWS = {
    ("cifar100", "augreg_in21k"): (20, 20, 0.01, 48, 5e-4),
    ("cub", "augreg_in21k"): (20, 20, 0.01, 48, 5e-4),
    ("imagenet_a", "augreg_in21k"): (20, 20, 0.01, 48, 5e-4),
    ("imr", "augreg_in21k"): (40, 20, 0.05, 24, 5e-3),
    ("objectnet", "augreg_in21k"): (20, 20, 0.01, 48, 5e-4),
    ("omnibenchmark", "augreg_in21k"): (10, 20, 0.01, 48, 5e-4),
    ("vtab", "augreg_in21k"): (5, 20, 0.01, 48, 5e-4),
    ("cifar100", "augreg_in21k_ft_in1k"): (10, 20, 0.01, 48, 5e-4),
    ("imr", "augreg_in21k_ft_in1k"): (10, 10, 0.05, 16, 5e-3),
}


def test_presets_compose_to_the_authors_settings():
    from hydra import compose, initialize_config_dir

    from norga.config import register
    from tests.learning import CONF

    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for (d, b), row in APER_ROWS.items():
            cfg = compose(config_name="config", overrides=["protocol=pilot", f"dataset={d}", f"backbone={b}",
                                                           "method=aper"])
            m = cfg.method
            assert (cfg.dataset.num_tasks, cfg.train.epochs, m.lr, cfg.train.batch_size, m.weight_decay) == row, (d, b)
            assert (m.bottleneck, m.optimizer, m.min_lr) == (64, "sgd", 0.0)
