"""SD-LoRA (docs/algorithm.md#sd-lora) on random weights: the composed update equals the written-out sum
alpha_t B_t A_t x + sum_{i<t} beta_i B_i A_i x / n_i for both normalisations, merged equals unmerged, earlier
tasks' A and B get no gradient while every magnitude in use does, magnitudes restart at 0.8 each task unless
method.keep_magnitudes, the rank schedules, and the learner's loss and cached-feature version."""

import pytest
import torch

from norga.engine.run import ContinualRun
from norga.models.peft import merge_lora
from norga.models.sdlora import SDLoRA, task_ranks
from norga.models.vit import vit_features
from tests.learning import compose_cfg
from tests.test_peft import DIM, images, randomise, tiny_vit

MAGNITUDES = [0.3, 1.7, -0.6, 2.2]


def model(direction_norm="product_of_norms", ranks=(2, 3, 2, 2), latest=2):
    """Blocks 0 and 2 with LoRA on q and v, every tensor random, tasks 0..``latest`` active, distinctive
    magnitudes."""
    vit = tiny_vit()
    lora = randomise(SDLoRA(vit, [0, 2], ("q", "v"), list(ranks), direction_norm=direction_norm))
    lora.activate(latest, reset_magnitudes=False)
    with torch.no_grad():
        lora.magnitudes.copy_(torch.tensor(MAGNITUDES))
    return vit, lora


def written_out(lora, block, target, x, latest, direction_norm):
    """m_t B_t A_t x + sum_{i<t} m_i B_i A_i x / n_i, one task at a time."""
    out = 0
    for i in range(latest + 1):
        m = lora.tasks[i].loras[str(block)][target]
        a, b = m.down.detach(), m.up.detach()
        term = MAGNITUDES[i] * (x @ a.T @ b.T)
        if i < latest:
            norm = (torch.linalg.matrix_norm(b) * torch.linalg.matrix_norm(a) if direction_norm == "product_of_norms"
                    else torch.linalg.matrix_norm(b @ a))
            term = term / norm
        out = out + term
    return out


@pytest.mark.parametrize("direction_norm", ["product_of_norms", "norm_of_product"])
def test_composed_update_equals_the_written_out_sum(direction_norm):
    vit, lora = model(direction_norm)
    x = torch.randn(5, 7, DIM)
    plan = lora.plan()
    assert sorted(plan) == [0, 2] and all(sorted(p.lora) == ["q", "v"] for p in plan.values())
    for block in (0, 2):
        for target in ("q", "v"):
            (branch,) = plan[block].lora[target]
            want = written_out(lora, block, target, x, 2, direction_norm)
            assert torch.allclose(branch(x), want, atol=1e-5, rtol=1e-5)
            assert torch.allclose(x @ branch.delta_weight().T, want, atol=1e-5, rtol=1e-5)
    # task 3 is built but not active: it adds nothing
    assert lora.num_active == 3


def test_the_two_normalisations_differ():
    x = torch.randn(3, DIM)
    a = model("product_of_norms")[1].branch(0, "q")(x)
    b = model("norm_of_product")[1].branch(0, "q")(x)
    assert not torch.allclose(a, b, atol=1e-4)


def test_merged_equals_unmerged_and_the_whole_pass_uses_the_composed_update():
    vit, lora = model()
    x = images()
    with torch.no_grad():
        unmerged = vit_features(vit, x, peft=lora.plan())
        assert not torch.allclose(unmerged, vit_features(vit, x), atol=1e-3)
        merged = merge_lora(vit, lora.plan())
        assert torch.allclose(vit_features(vit, x), unmerged, atol=1e-5)
        merged.unmerge()
        assert torch.allclose(vit_features(vit, x, peft=lora.plan()), unmerged, atol=1e-5)


def test_earlier_tasks_get_no_gradient_and_every_magnitude_in_use_does():
    vit, lora = model(latest=2)
    params = lora.trainable()
    current = lora.tasks[2]
    assert {id(p) for p in params} == {id(p) for p in current.parameters()} | {id(lora.magnitudes)}
    vit_features(vit, images(), peft=lora.plan()).pow(2).sum().backward()
    for old in lora.tasks[:2]:
        assert all(p.grad is None or not p.grad.any() for p in old.parameters())
    assert all(p.grad is not None and p.grad.abs().min() > 0 for p in current.parameters())
    grad = lora.magnitudes.grad
    assert (grad[:3].abs() > 0).all(), grad  # alpha_2, beta_0, beta_1
    assert not grad[3:].any()  # task 3 is not in use yet


def test_rank_schedules():
    assert task_ranks(5, 10, None) == [10] * 5
    assert task_ranks(12, 10, "rr") == [10] * 4 + [8] * 4 + [6] * 4
    assert task_ranks(10, 4, "rr") == [4] * 4 + [2] * 4 + [1] * 2
    with pytest.raises(ValueError, match="rank schedule"):
        task_ranks(3, 10, "halve")


# ---- the learner, on the embedded default --------------------------------------------------------------------
def learner(tmp_path, *overrides):
    return ContinualRun(compose_cfg(["method=sdlora", "dataset.num_tasks=5", *overrides]), tmp_path).learner


def test_the_learner_builds_the_schedules_ranks_on_q_and_v_of_every_block(tmp_path):
    rr = learner(tmp_path, "method.rank=10", "method.rank_schedule=rr")
    assert [t.loras["0"]["q"].rank for t in rr.lora.tasks] == [10, 10, 10, 10, 8]
    assert rr.lora.layers == list(range(len(rr.backbone.blocks))) and rr.lora.targets == ("q", "v")


@pytest.mark.parametrize("keep", [False, True])
def test_magnitudes_restart_at_0_8_each_task_unless_kept(tmp_path, keep):
    sd = learner(tmp_path, f"method.keep_magnitudes={str(keep).lower()}")
    sd.start_task(0)
    with torch.no_grad():
        sd.lora.magnitudes[0] = 1.3  # learned during task 0
    sd.start_task(1)
    want = [1.3, 0.8] if keep else [0.8, 0.8]
    assert torch.allclose(sd.lora.magnitudes[:2], torch.tensor(want))


def test_the_loss_is_cross_entropy_over_the_current_tasks_classes_and_old_rows_get_no_gradient(tmp_path):
    sd = learner(tmp_path)
    sd.start_task(0)
    randomise(sd.lora.tasks[0])
    loss_fn, params = sd.benchmark_step(1)
    randomise(sd.lora.tasks[1], seed=5)
    classes = sd.benchmark.task_classes[1]
    x, y = torch.randn(6, 3, 32, 32), torch.tensor(classes[:2] * 3)
    loss = loss_fn(x, y)
    with torch.no_grad():
        logits = sd.head(vit_features(sd.backbone, x, peft=sd.lora.plan()))
        want = torch.nn.functional.cross_entropy(logits[:, classes], torch.tensor([0, 1] * 3))
    assert torch.allclose(loss, want, atol=1e-5)
    loss.backward()
    old = sd.benchmark.task_classes[0]
    assert not sd.head.weight.grad[old].any() and sd.head.weight.grad[classes].abs().sum() > 0
    assert all(p.grad is None for p in sd.lora.tasks[0].parameters())
    assert (sd.lora.magnitudes.grad[:2].abs() > 0).all()


def test_features_version_follows_every_lora_tensor_and_magnitude(tmp_path):
    sd = learner(tmp_path)
    sd.start_task(1)
    before = sd.features_version(())
    with torch.no_grad():
        sd.lora.magnitudes[0] += 0.1
    after_magnitude = sd.features_version(())
    with torch.no_grad():
        sd.lora.tasks[0].loras["1"]["v"].down[0, 0] += 0.1
    assert len({before, after_magnitude, sd.features_version(())}) == 3


def test_numpy_class_orders_take_any_fixed_seed():
    """SD-LoRA's configs: np.random.seed(seed); permutation(C), seed 1995 on ImageNet-R, 1993 elsewhere."""
    from norga.data.protocol import class_order, order_label

    assert class_order(200, "numpy_1995", seed=7)[:4] == [146, 198, 169, 126]
    assert class_order(200, "numpy_1993", seed=7)[:4] == [168, 136, 51, 9]
    assert order_label("numpy_1995", seed=7) == "np-seed-1995"
    with pytest.raises(ValueError, match="must be seeded or numpy_1993"):
        class_order(10, "numpy_x", seed=7)


def test_predictions_do_not_depend_on_the_test_batch(tmp_path):
    sd = learner(tmp_path)
    sd.start_task(1)
    randomise(sd.lora.tasks[0])
    randomise(sd.lora.tasks[1], seed=4)
    sd.eval_mode()
    x = torch.randn(4, 3, 32, 32)
    together = sd.logits(sd.features(x, None, None), 1)
    alone = torch.cat([sd.logits(sd.features(x[i:i + 1], None, None), 1) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)
    unseen = ~sd.benchmark.seen_mask(1)
    assert torch.isinf(together[:, unseen]).all() and torch.isfinite(together[:, ~unseen]).all()


def test_the_config_takes_numpy_orders_with_any_seed():
    from norga.config import ConfigError, validate

    ok = compose_cfg(["method=sdlora", "dataset.class_order=numpy_1995"])
    validate(ok)
    with pytest.raises(ConfigError, match="numpy_<seed>"):
        validate(compose_cfg(["method=sdlora", "dataset.class_order=numpy"]))
