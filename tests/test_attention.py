"""The gated prefix attention computes the formula of docs/algorithm.md#prefix-attention-and-the-norga-gate, on
the fused and the explicit path."""

import pytest
import torch
from timm.layers import Attention

from norga.models.attention import Prefix, PrefixAttention
from norga.models.gates import gate_names, get_gate

DIM, HEADS, N, L, B = 32, 4, 9, 3, 5
HEAD_DIM = DIM // HEADS


def formula(attn: PrefixAttention, x, pk, pv, gate, tau, alpha):
    """The formula written out independently: [s + alpha*gate(tau*s), scale*q k^T] softmaxed together."""
    qkv = attn.qkv(x).reshape(B, N, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scale = HEAD_DIM**-0.5
    s = scale * torch.einsum("bhnd,bhld->bhnl", q, pk)
    if gate is not None:
        s = s + alpha * gate(tau * s)
    image = scale * torch.einsum("bhnd,bhmd->bhnm", q, k)
    weights = torch.softmax(torch.cat([s, image], dim=-1), dim=-1)
    out = torch.einsum("bhnk,bhkd->bhnd", weights, torch.cat([pv, v], dim=2))
    return attn.proj(out.transpose(1, 2).reshape(B, N, DIM))


def make(seed=0):
    torch.manual_seed(seed)
    attn = PrefixAttention(DIM, num_heads=HEADS, qkv_bias=True)
    x = torch.randn(B, N, DIM, requires_grad=True)
    pk = torch.randn(B, HEADS, L, HEAD_DIM, requires_grad=True)
    pv = torch.randn(B, HEADS, L, HEAD_DIM, requires_grad=True)
    tau = torch.full((1, 1), 1.7, requires_grad=True)
    alpha = torch.full((1, 1), 0.6, requires_grad=True)
    return attn, x, pk, pv, tau, alpha


@pytest.mark.parametrize("gate", gate_names() + [None])
@pytest.mark.parametrize("fused", [True, False])
def test_prefix_attention_matches_formula_forward_and_backward(gate, fused):
    attn, x, pk, pv, tau, alpha = make()
    attn.fused_attn = fused
    fn = get_gate(gate) if gate else None
    prefix = Prefix(pk, pv, fn, tau if fn else None, alpha if fn else None)
    inputs = [x, pk, pv] + ([tau, alpha] if fn else [])
    ours = attn(x, prefix=prefix)
    ref = formula(attn, x, pk, pv, fn, tau, alpha)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)
    g_ours = torch.autograd.grad(ours.sin().sum(), inputs)
    g_ref = torch.autograd.grad(ref.sin().sum(), inputs)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_gate_changes_only_prefix_logits():
    """With alpha = 0 the gate term vanishes: NoRGa equals plain prefix tuning."""
    attn, x, pk, pv, tau, _ = make()
    zero = torch.zeros(1, 1)
    gated = attn(x, prefix=Prefix(pk, pv, get_gate("tanh"), tau, zero))
    plain = attn(x, prefix=Prefix(pk, pv))
    assert torch.allclose(gated, plain, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_without_prefix_equals_timm_attention(fused):
    attn, x, *_ = make()
    attn.fused_attn = fused
    timm_attn = Attention(DIM, num_heads=HEADS, qkv_bias=True)
    timm_attn.load_state_dict(attn.state_dict())
    assert torch.allclose(attn(x), timm_attn(x), atol=1e-6)


def test_gate_activations_are_the_named_functions():
    x = torch.linspace(-3, 3, 13)
    expected = {"tanh": torch.tanh(x), "sigmoid": torch.sigmoid(x), "relu": x.clamp(min=0),
                "gelu": torch.nn.functional.gelu(x), "softplus": torch.log1p(x.exp()),
                "elu": torch.where(x > 0, x, x.exp() - 1), "linear": x}
    assert sorted(expected) == gate_names()
    for name, value in expected.items():
        assert torch.allclose(get_gate(name)(x), value, atol=1e-6), name


def test_unknown_gate_lists_known_ones():
    with pytest.raises(ValueError, match="known gates: elu, gelu"):
        get_gate("swish")
