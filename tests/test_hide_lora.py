"""HiDe-LoRA (docs/algorithm.md#hide-lora) on random weights: the slot momentum is the written-out mix, training
slot t gives earlier slots zero gradient, a per-sample slot gather equals running each slot alone, a zero-up
LoRA (the init) leaves the ViT unchanged, the TII source switch changes what the query is, unseen classes are
scored unless masked, and no gate is taken."""

import math
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir

from norga.config import register
from norga.engine.optim import BY_GLOBAL_BATCH, UNSCALED
from norga.engine.run import ContinualRun
from norga.models.peft.lora_pool import LoRAPool
from norga.models.vit import vit_features
from tests.learning import CONF, compose_cfg, preset_row
from tests.test_peft import images, randomise, tiny_vit

RANK, SLOTS, LAYERS = 3, 3, [0, 2]


def pool(seed=2, random=True):
    module = LoRAPool(tiny_vit(), SLOTS, LAYERS, ("k", "v"), RANK, scale=1 / RANK, down_init="kaiming_rank")
    return randomise(module, seed) if random else module


def learner(tmp_path, overrides=()):
    return ContinualRun(compose_cfg(["method=hide_lora", *overrides]), tmp_path).learner


# ---- the pool ----------------------------------------------------------------------------------------------
def test_slot_momentum_is_the_written_out_mix():
    p = pool()
    before = [[t.clone() for t in p.slot_tensors(s)] for s in range(SLOTS)]
    p.mix_with_earlier(2, 0.1)
    for k, after in enumerate(p.slot_tensors(2)):
        expected = 0.9 * before[2][k] + 0.1 * (before[0][k] + before[1][k]) / 2
        torch.testing.assert_close(after, expected, rtol=0, atol=1e-7)
    for s in (0, 1):  # the earlier slots stay as they were
        assert all(torch.equal(a, b) for a, b in zip(p.slot_tensors(s), before[s], strict=True))
    p.mix_with_earlier(0, 0.1)  # slot 0 has nothing before it
    assert all(torch.equal(a, b) for a, b in zip(p.slot_tensors(0), before[0], strict=True))


def test_training_one_slot_gives_the_other_slots_zero_gradient():
    p, vit, x = pool(), tiny_vit(), images()
    p.train_only(1)
    vit_features(vit, x, peft=p.plan(1)).square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in p.slot_tensors(1))
    assert all(t.grad is None or not t.grad.any() for s in (0, 2) for t in p.slot_tensors(s))


def test_per_sample_slots_equal_each_slot_run_alone():
    p, vit, x = pool(), tiny_vit(), images(5)
    ids = torch.tensor([2, 0, 1, 0, 2])
    with torch.no_grad():
        mixed = vit_features(vit, x, peft=p.plan_for_ids(ids))
        alone = torch.stack([vit_features(vit, x[i:i + 1], peft=p.plan(int(s)))[0] for i, s in enumerate(ids)])
        assert not torch.allclose(alone[0], vit_features(vit, x[:1], peft=p.plan(1))[0], atol=1e-3)
    torch.testing.assert_close(mixed, alone, rtol=1e-5, atol=1e-5)


def test_the_initial_lora_leaves_the_vit_unchanged_and_draws_down_with_fan_in_rank():
    p, vit, x = pool(random=False), tiny_vit(), images()
    with torch.no_grad():
        for s in range(SLOTS):
            assert torch.equal(vit_features(vit, x, peft=p.plan(s)), vit_features(vit, x))
    for lora in p.branches(0):
        assert not lora.up.any()
        bound = 1 / math.sqrt(RANK)  # kaiming-uniform, a = sqrt 5, on the (d, r) matrix: U(-1/sqrt r, 1/sqrt r)
        assert lora.down.abs().max() <= bound and lora.down.abs().max() > 0.5 * bound
    assert not torch.equal(p.branches(0)[0].down, p.branches(1)[0].down)  # each slot draws its own


# ---- the learner -------------------------------------------------------------------------------------------
def test_wtp_step_trains_the_task_slot_and_head_only(tmp_path):
    hl = learner(tmp_path)
    randomise(hl.pool)
    loss_fn, params = hl.benchmark_step(1)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor(hl.benchmark.task_classes[1][:4])
    loss_fn(x, y).backward()
    trained = {id(t) for t in params}
    assert all(id(t) in trained and t.grad.abs().sum() > 0 for t in hl.pool.slot_tensors(1))
    assert all(t.grad is None or not t.grad.any() for t in hl.pool.slot_tensors(0))
    assert not any(id(t) in trained for t in hl.pool.slot_tensors(0))


def test_tii_source_switch_changes_what_the_query_is(tmp_path):
    x = torch.randn(3, 3, 32, 32)
    mlp = learner(tmp_path / "mlp", ["method.tii_source=mlp"])
    assert mlp.query_version() == "frozen" and "tii_lora" not in mlp.modules()
    torch.testing.assert_close(mlp.query(x), mlp.backbone_features(x), rtol=0, atol=0)
    lora = learner(tmp_path / "lora")
    version = lora.query_version()
    torch.testing.assert_close(lora.query(x), lora.backbone_features(x), rtol=0, atol=0)  # g starts at zero
    randomise(lora.tii_lora, std=0.1)
    assert lora.query_version() != version  # g's training changes every test set's query
    query = lora.query(x)
    assert not torch.allclose(query, lora.backbone_features(x), atol=1e-3)
    torch.testing.assert_close(query, vit_features(lora.backbone, x, peft=lora.tii_lora.plan()))
    assert type(lora.tii).__name__ == "Linear" and type(mlp.tii).__name__ == "TIIHead"


@pytest.mark.parametrize("task, lora_factor", [(0, 1.0), (1, 0.1)])
def test_tii_lora_learns_slowly_from_task_one_and_its_tap_lr_is_not_batch_scaled(tmp_path, task, lora_factor):
    hl, seen = learner(tmp_path), {}
    hl.train_epochs = lambda ctx, step, groups, **kw: seen.update(groups=groups, **kw)
    hl.tii_train(SimpleNamespace(task=task))
    (lora, factor), (head, head_factor) = seen["groups"]
    assert {id(p) for p in lora} == {id(p) for p in hl.tii_lora.parameters()} and factor == lora_factor
    assert {id(p) for p in head} == {id(p) for p in hl.tii.parameters()} and head_factor == 1.0
    assert (seen["epochs"], seen["lr"], seen["clip_grad"]) == (hl.method.tii.epochs, hl.method.tii.lr, 2.0)
    assert hl.lr_rule("tii_tap") is UNSCALED and hl.lr_rule("wtp_tap") is UNSCALED
    assert hl.lr_rule("tii_train") is BY_GLOBAL_BATCH and hl.lr_rule("wtp_train") is BY_GLOBAL_BATCH
    mlp = learner(tmp_path / "mlp", ["method.tii_source=mlp"])
    assert mlp.lr_rule("tii_tap") is BY_GLOBAL_BATCH  # HiDe-Prompt's rule for its MLP's TAP


def test_selection_picks_the_task_of_the_tii_class_and_its_slot(tmp_path):
    hl = learner(tmp_path)
    randomise(hl.pool)
    x = torch.randn(4, 3, 32, 32)
    selection = hl.select(hl.query(x), upto_task=1)
    classes = hl.tii(hl.query(x)).masked_fill(~hl.benchmark.seen_mask(1), float("-inf")).argmax(1)
    assert selection[:, 0].tolist() == [hl.benchmark.class_to_task[c] for c in classes.tolist()]
    mixed = torch.tensor([[0], [1], [1], [0]])
    feats = hl.features(x, mixed, None)
    for i, s in enumerate(mixed[:, 0].tolist()):
        torch.testing.assert_close(feats[i:i + 1], hl.task_features(x[i:i + 1], s), rtol=1e-5, atol=1e-5)
    assert hl.features_version((0,)) != hl.features_version((1,))


def test_unseen_classes_are_scored_unless_masked(tmp_path):
    feats = torch.randn(3, 96)
    seen = learner(tmp_path / "a").benchmark.seen_mask(0)
    assert torch.isfinite(learner(tmp_path / "a").logits(feats, 0)).all()  # the reference: no mask at test
    masked = learner(tmp_path / "b", ["method.mask_unseen_at_test=true"]).logits(feats, 0)
    assert torch.isinf(masked[:, ~seen]).all() and torch.isfinite(masked[:, seen]).all()


def test_hide_lora_refuses_a_gate(tmp_path):
    with pytest.raises(ValueError, match="gate"):
        ContinualRun(compose_cfg(["method=hide_lora", "gate=tanh"]), tmp_path)


# ---- presets -----------------------------------------------------------------------------------------------
def official(dataset):
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config",
                       overrides=[f"dataset={dataset}", "backbone=augreg_in21k_ft_in1k", "method=hide_lora"])


@pytest.mark.parametrize("dataset, epochs, lr, rank, reg, source, schedule", [
    ("imr", 50, 0.01, 5, 0.001, "lora", "cosine"), ("cifar100", 20, 0.01, 8, 0.01, "mlp", "constant")])
def test_presets_give_the_official_settings(dataset, epochs, lr, rank, reg, source, schedule):
    cfg = official(dataset)
    assert preset_row(f"{dataset}_augreg_in21k_ft_in1k_hide_lora") == (dataset, "augreg_in21k_ft_in1k", "hide_lora")
    d, train = cfg.dataset, cfg.train
    assert (d.num_tasks, d.shuffle, train.epochs, train.clip_grad) == (10, False, epochs, 2.0)
    # 8 GPUs x 24, lr scaled by the per-GPU batch: the same effective lr at norga's global batch of 192
    assert cfg.train.batch_size == 192
    assert cfg.optimizer.lr * 192 / 256 == pytest.approx(lr * 24 / 256)
    assert cfg.optimizer.partial._target_ == "torch.optim.Adam" and cfg.optimizer.partial.weight_decay == 0
    m = cfg.method
    assert (m.rank, list(m.lora_layers), m.reg, m.lora_momentum) == (rank, [0, 1, 2, 3, 4], reg, 0.1)
    assert m.tii_source == source
    assert (m.statistics, m.n_centroids, m.tap.lr, m.tap.epochs, m.mask_unseen_at_test) == (
        "multi_centroid", 10, 0.005, 30, False)
    assert cfg.scheduler.name == schedule
    if source == "lora":
        assert cfg.dataset.normalize == "none"
        assert (m.tii.epochs, m.tii.lr * 192 / 256, m.tii.slow_lr) == (50, pytest.approx(0.03 * 24 / 256), 0.1)
