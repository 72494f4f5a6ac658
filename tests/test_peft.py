"""The parameter-efficient model layer (norga/models/peft): LoRA merged == unmerged, zero-initialised modules
change nothing, gradients reach only what a pass attaches, one block with a prefix + LoRA + adapter equals the
written-out formula, per-task adapter selection, and state-dict round trips."""

import pytest
import timm
import torch
import torch.nn.functional as F

from norga.models.attention import Prefix
from norga.models.gates import get_gate
from norga.models.peft import (
    LORA_TARGETS,
    AdapterBank,
    AdapterSet,
    BlockPeft,
    LoRA,
    LoRALayers,
    ParallelAdapters,
    PeftBlock,
    attachments,
    bind,
    compose,
)
from norga.models.prompts import PromptPool
from norga.models.vit import vit_features

HEADS, HEAD_DIM, DEPTH = 2, 8, 3
DIM = HEADS * HEAD_DIM


def tiny_vit(seed=1):
    torch.manual_seed(seed)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16, patch_size=8,
                            embed_dim=DIM, depth=DEPTH, num_heads=HEADS, block_fn=PeftBlock)
    return vit.requires_grad_(False).eval()


def images(n=4, seed=0):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def randomise(module, seed=2, std=0.3):
    """Non-zero values everywhere (a trained module), drawn from a seed of their own."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def test_zero_initialised_lora_and_adapters_change_nothing_exactly():
    vit = tiny_vit()
    x = images()
    lora = LoRALayers(vit, range(DEPTH), LORA_TARGETS, rank=3)
    adapters = AdapterSet.for_vit(vit, bottleneck=4, dropout=0.1, scale=0.1)
    pool = PromptPool([0, 2], 2, 3, HEADS, HEAD_DIM, gate="tanh")
    prefixes = pool.prefixes_for_task(1, len(x))
    with torch.no_grad():
        assert torch.equal(vit_features(vit, x, peft=compose(lora.plan(), adapters.plan())), vit_features(vit, x))
        assert torch.equal(vit_features(vit, x, prefixes, peft=compose(lora.plan(), adapters.plan())),
                           vit_features(vit, x, prefixes))
    # the up matrices are zero, the down ones not (they train once the up ones move)
    assert all(m.down.abs().sum() > 0 and not m.up.any() for per in lora.loras.values() for m in per.values())


@pytest.mark.parametrize("targets", [("k", "v"), ("q", "v"), ("qkv", "proj", "fc1", "fc2")])
def test_merged_lora_equals_unmerged_and_unmerging_restores_the_weights(targets):
    vit = tiny_vit()
    x = images()
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    lora = randomise(LoRALayers(vit, [0, 2], targets, rank=2, scale=0.5))
    with torch.no_grad():
        plain = vit_features(vit, x)
        unmerged = vit_features(vit, x, peft=lora.plan())
        assert not torch.allclose(unmerged, plain, atol=1e-3)
        lora.merge(vit)
        assert lora.plan() == {}
        merged = vit_features(vit, x, peft=lora.plan())
        assert torch.allclose(merged, unmerged, atol=1e-5)
        lora.unmerge()
        assert torch.allclose(vit_features(vit, x, peft=lora.plan()), unmerged, atol=1e-5)
    after = vit.state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    with pytest.raises(RuntimeError, match="not merged"):
        lora.unmerge()


def test_gradients_reach_only_the_attached_modules():
    vit = tiny_vit()
    lora = randomise(LoRALayers(vit, [1], ("k", "v", "fc2"), rank=2))
    other = randomise(LoRALayers(vit, [1], ("k",), rank=2), seed=3)  # built, not attached
    bank = AdapterBank(DIM, DEPTH, bottleneck=4, dropout=0.0, scale=0.1, layers=[0, 2])
    bank.add(), bank.add()
    randomise(bank, seed=4)
    pool = PromptPool([2], 2, 3, HEADS, HEAD_DIM, gate="tanh")
    x = images()
    plan = compose(lora.plan(), bank.plan(1), attachments(prefixes=pool.prefixes_for_task(0, len(x))))
    vit_features(vit, x, peft=plan).square().sum().backward()
    assert all(p.grad is None for p in vit.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bank.sets[1].parameters())
    assert all(p.grad is None for p in [*other.parameters(), *bank.sets[0].parameters()])
    assert pool.prompts.grad[:, :, 0].abs().sum() > 0 and not pool.prompts.grad[:, :, 1].any()


def test_prefix_lora_and_adapter_in_one_block_equal_the_written_out_formula():
    vit = tiny_vit()
    block = vit.blocks[1]
    gen = torch.Generator().manual_seed(5)
    b, n, length = 3, 5, 4
    x = torch.randn(b, n, DIM, generator=gen)
    pk, pv = torch.randn(2, b, HEADS, length, HEAD_DIM, generator=gen)
    tau, alpha = torch.tensor(0.7), torch.tensor(1.3)
    lq, lv, lp, lf = (randomise(LoRA(DIM, out, 2, scale=s), seed=i)
                      for i, (out, s) in enumerate([(DIM, 0.5), (DIM, 1.0), (DIM, 2.0), (4 * DIM, 1.0)]))
    adapter = randomise(AdapterSet.for_vit(vit, 4, 0.1, 0.1, layers=[1]), seed=9).eval().adapters["1"]
    peft = BlockPeft(prefix=Prefix(pk, pv, get_gate("tanh"), tau, alpha),
                     lora={"q": (lq,), "v": (lv,), "proj": (lp,), "fc1": (lf,)}, adapters=(adapter,))
    with torch.no_grad():
        ours = block(x, peft=peft)

        def lora(m, u):
            return m.scale * (u @ m.down.T @ m.up.T)

        def heads(t):
            return t.reshape(b, n, HEADS, HEAD_DIM).transpose(1, 2)

        a, m = block.attn, block.mlp
        u = F.layer_norm(x, (DIM,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
        wq, wk, wv = a.qkv.weight.split(DIM)
        bq, bk, bv = a.qkv.bias.split(DIM)
        q = heads(u @ wq.T + bq + lora(lq, u))
        k = heads(u @ wk.T + bk)
        v = heads(u @ wv.T + bv + lora(lv, u))
        s = q @ pk.transpose(-2, -1) * HEAD_DIM**-0.5
        logits = torch.cat([s + alpha * torch.tanh(tau * s), q @ k.transpose(-2, -1) * HEAD_DIM**-0.5], dim=-1)
        o = (logits.softmax(-1) @ torch.cat([pv, v], dim=2)).transpose(1, 2).reshape(b, n, DIM)
        h = x + o @ a.proj.weight.T + a.proj.bias + lora(lp, o)
        u2 = F.layer_norm(h, (DIM,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
        hidden = F.gelu(u2 @ m.fc1.weight.T + m.fc1.bias + lora(lf, u2))
        mlp = hidden @ m.fc2.weight.T + m.fc2.bias
        adapted = 0.1 * (torch.relu(h @ adapter.down.weight.T + adapter.down.bias) @ adapter.up.weight.T
                         + adapter.up.bias)
        expected = h + mlp + adapted
    assert torch.allclose(ours, expected, atol=1e-5)


def test_a_pass_uses_the_adapter_set_it_names():
    vit = tiny_vit()
    x = images()
    bank = AdapterBank(DIM, DEPTH, bottleneck=4, dropout=0.1, scale=0.1)
    for i in range(3):
        bank.add()
        randomise(bank.sets[i], seed=10 + i)
    bank.eval()
    with torch.no_grad():
        plain = vit_features(vit, x)
        per_set = [vit_features(vit, x, peft=bank.plan(i)) for i in range(3)]
        for i, feats in enumerate(per_set):
            alone = AdapterSet(DIM, DEPTH, 4, 0.1, 0.1)
            alone.load_state_dict(bank.sets[i].state_dict())
            assert torch.equal(feats, vit_features(vit, x, peft=alone.eval().plan()))
            assert not torch.allclose(feats, plain, atol=1e-3)
        assert not torch.allclose(per_set[0], per_set[1], atol=1e-3)
        assert torch.equal(vit_features(vit, x), plain)  # a pass's attachments do not outlive it
        assert bank.add(copy_of=1) == 3
        assert torch.equal(vit_features(vit, x, peft=bank.plan(3)), per_set[1])
        bank.sets[3].adapters["0"].up.weight.add_(1.0)  # a copy, not the same modules
        assert torch.equal(vit_features(vit, x, peft=bank.plan(1)), per_set[1])
    with pytest.raises(IndexError):
        bank.plan(4)


def test_state_dicts_round_trip_and_leave_the_backbone_keys_alone():
    vit = tiny_vit()
    keys = list(vit.state_dict())
    assert "blocks.0.attn.qkv.weight" in keys and "blocks.0.mlp.fc1.weight" in keys  # timm's names
    x = images()
    lora = randomise(LoRALayers(vit, [0, 1], ("k", "v"), rank=3), seed=7)
    bank = AdapterBank(DIM, DEPTH, bottleneck=4, dropout=0.1, scale=0.1)
    bank.add(), bank.add()
    randomise(bank, seed=8)
    bound = ParallelAdapters(vit, 4, 0.1, 0.1)
    assert "loras.1.v.up" in lora.state_dict() and "sets.1.adapters.2.down.weight" in bank.state_dict()
    assert list(bound.state_dict())[:2] == ["adapters.0.down.weight", "adapters.0.down.bias"]
    assert list(vit.state_dict()) == keys
    lora2 = LoRALayers(vit, [0, 1], ("k", "v"), rank=3)
    lora2.load_state_dict(lora.state_dict())
    bank2 = AdapterBank(DIM, DEPTH, bottleneck=4, dropout=0.1, scale=0.1)
    bank2.add(), bank2.add()
    bank2.load_state_dict(bank.state_dict())
    bank.eval(), bank2.eval()
    with torch.no_grad():
        for i in range(2):
            assert torch.equal(vit_features(vit, x, peft=compose(lora.plan(), bank.plan(i))),
                               vit_features(vit, x, peft=compose(lora2.plan(), bank2.plan(i))))


def test_bound_modules_apply_to_every_pass_until_removed():
    vit = tiny_vit()
    x = images()
    lora = randomise(LoRALayers(vit, [1], ("q", "fc1"), rank=2))
    with torch.no_grad():
        plain = vit_features(vit, x)
        attached = vit_features(vit, x, peft=lora.plan())
        binding = bind(vit, lora.plan())
        # timm's own forward sees the bound branches too
        assert torch.equal(vit.forward_head(vit.forward_features(x), pre_logits=True), attached)
        binding.remove()
        assert torch.equal(vit_features(vit, x), plain)


def test_conflicting_or_unknown_attachments_are_refused():
    vit = tiny_vit()
    pool = PromptPool([0], 2, 3, HEADS, HEAD_DIM)
    a, b = pool.prefixes_for_task(0, 2), pool.prefixes_for_task(1, 2)
    with pytest.raises(ValueError, match="two prefix"):
        compose(attachments(prefixes=a), attachments(prefixes=b))
    with pytest.raises(ValueError, match="unknown LoRA target"):
        BlockPeft(lora={"key": ()})
    with pytest.raises(ValueError, match="targets"):
        LoRALayers(vit, [0], ("q", "w_o"), rank=2)
    with pytest.raises(ValueError, match="block indices"):
        LoRALayers(vit, [DEPTH], ("q",), rank=2)
    with pytest.raises(ValueError, match="per batch|belong to one batch"):
        bind(vit, attachments(prefixes=a))
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16, patch_size=8,
                              embed_dim=DIM, depth=1, num_heads=HEADS)
    with pytest.raises(TypeError, match="PeftBlock"):
        LoRALayers(plain, [0], ("q",), rank=2)
