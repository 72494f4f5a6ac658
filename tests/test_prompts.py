"""Prompt selection: per-sample prefixes are batch-independent; the reference layout mixes exactly as
docs/algorithm.md#d1-prefix-layout-methodprefix_layout describes; momentum and prompt copy follow the spec."""

import pytest
import timm
import torch

from norga.models.peft import PeftBlock
from norga.models.prompts import PromptPool
from norga.models.vit import vit_features

LAYERS, TASKS, LENGTH, HEADS, HEAD_DIM = [0, 1], 4, 3, 2, 8


def pool(layout="per_sample", gate="tanh", seed=0):
    torch.manual_seed(seed)
    return PromptPool(LAYERS, TASKS, LENGTH, HEADS, HEAD_DIM, gate=gate, layout=layout)


def small_vit():
    torch.manual_seed(1)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16, patch_size=8,
                            embed_dim=HEADS * HEAD_DIM, depth=3, num_heads=HEADS, block_fn=PeftBlock)
    return vit.eval()


def test_prompt_shapes_and_init():
    p = pool()
    assert p.prompts.shape == (len(LAYERS), 2, TASKS, LENGTH, HEADS, HEAD_DIM)
    assert p.prompts.min() >= -1 and p.prompts.max() <= 1
    assert p.gate_params.shape == (len(LAYERS), 2, 1, 1) and torch.all(p.gate_params == 1)
    assert pool(gate=None).gate_params is None


@pytest.mark.parametrize("gate", ["tanh", None])
def test_prediction_independent_of_batch_size_and_neighbours(gate):
    vit, p = small_vit(), pool(gate=gate)
    x = torch.randn(6, 3, 16, 16)
    ids = torch.tensor([0, 3, 1, 1, 2, 0])
    with torch.no_grad():
        together = vit_features(vit, x, p.prefixes_for_ids(ids))
        alone = torch.cat([vit_features(vit, x[i:i + 1], p.prefixes_for_ids(ids[i:i + 1])) for i in range(6)])
        reversed_batch = vit_features(vit, x.flip(0), p.prefixes_for_ids(ids.flip(0))).flip(0)
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(together, reversed_batch, atol=1e-5)


def test_per_sample_layout_gives_each_sample_its_own_key_and_value():
    p = pool()
    ids = torch.tensor([2, 0, 3, 1])
    prefixes = p.prefixes_for_ids(ids)
    for i, layer in enumerate(LAYERS):
        for b, t in enumerate(ids.tolist()):
            assert torch.equal(prefixes[layer].key[b], p.prompts[i, 0, t].transpose(0, 1))
            assert torch.equal(prefixes[layer].value[b], p.prompts[i, 1, t].transpose(0, 1))


def test_reference_layout_mixes_prefixes_as_the_defect_describes():
    """Sample b gets (key of 2b, key of 2b+1) when b < B/2, else (value of 2b-B, value of 2b-B+1)."""
    p = pool(layout="reference")
    ids = torch.tensor([2, 0, 3, 1])
    B = len(ids)
    prefixes = p.prefixes_for_ids(ids)
    prompt = lambda i, kv, b: p.prompts[i, kv, ids[b]].transpose(0, 1)  # noqa: E731
    for i, layer in enumerate(LAYERS):
        for b in range(B):
            kv, src = (0, 2 * b) if b < B // 2 else (1, 2 * b - B)
            assert torch.equal(prefixes[layer].key[b], prompt(i, kv, src))
            assert torch.equal(prefixes[layer].value[b], prompt(i, kv, src + 1))


def test_reference_layout_in_training_splits_batch_into_key_key_and_value_value():
    p = pool(layout="reference")
    prefixes = p.prefixes_for_task(1, batch_size=4)
    key = p.prompts[0, 0, 1].transpose(0, 1)
    value = p.prompts[0, 1, 1].transpose(0, 1)
    first = prefixes[LAYERS[0]]
    for b in (0, 1):
        assert torch.equal(first.key[b], key) and torch.equal(first.value[b], key)
    for b in (2, 3):
        assert torch.equal(first.key[b], value) and torch.equal(first.value[b], value)


def test_reference_layout_makes_predictions_depend_on_the_batch():
    vit = small_vit()
    ref, good = pool(layout="reference"), pool(layout="per_sample")
    x = torch.randn(4, 3, 16, 16)
    ids = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        batch = vit_features(vit, x, ref.prefixes_for_ids(ids))
        correct = vit_features(vit, x, good.prefixes_for_ids(ids))
        # sample 2 gets (value 0, value 1) in the batch of four, (key 2, key 3) in the batch [2, 3]
        pair = vit_features(vit, x[2:], ref.prefixes_for_ids(ids[2:]))
    assert not torch.allclose(batch, correct, atol=1e-3)
    assert not torch.allclose(batch[2], pair[0], atol=1e-3)


def test_momentum_mix_and_commit():
    p = pool()
    m = 0.25
    expected = (1 - m) * p.prompts[:, :, 2] + m * p.prompts[:, :, :2].mean(dim=2)
    assert torch.allclose(p.task_prompt(2, m), expected)
    assert torch.equal(p.task_prompt(0, m), p.prompts[:, :, 0])  # no earlier prompts at task 0
    p.commit_momentum(2, m)
    assert torch.allclose(p.prompts[:, :, 2], expected)


def test_momentum_does_not_send_gradient_to_earlier_prompts():
    p = pool()
    p.task_prompt(2, 0.5).sum().backward()
    assert torch.all(p.prompts.grad[:, :, :2] == 0)
    assert torch.all(p.prompts.grad[:, :, 2] == 0.5)


def test_copy_prompt():
    p = pool()
    p.copy_prompt(1, 2)
    assert torch.equal(p.prompts[:, :, 2], p.prompts[:, :, 1])


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="per_sample"):
        pool(layout="mixed")
