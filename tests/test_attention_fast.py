"""Every fused prefix-attention implementation computes the gated formula
(docs/algorithm.md#prefix-attention-and-the-norga-gate): exactly in fp32 (forward and all gradients, every
gate), within bf16 rounding under bf16 autocast, inside a whole prompted ViT, under
torch.compile; and the per-device choice never silently changes numbers."""

import logging
import warnings

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import norga.models.attention as attention
from norga.models.attention import (
    Prefix,
    PrefixAttention,
    configure_prefix_attention,
    describe_prefix_impl,
    resolve_prefix_impl,
)
from norga.models.gates import gate_names, get_gate
from norga.models.peft import PeftBlock
from norga.models.prompts import PromptPool
from norga.models.vit import vit_features

DIM, HEADS, N, L, B = 64, 4, 17, 5, 3
HEAD_DIM = DIM // HEADS
CPU_IMPLS = ["explicit", "sdpa_mask", "lse_merge", "augmented"]  # with a backward on CPU
GATES = gate_names() + [None]


def formula(attn: PrefixAttention, x, pk, pv, gate, tau, alpha):
    """The formula written out in float64, independently of the module's code paths."""
    w, bias = attn.qkv.weight.double(), attn.qkv.bias.double()
    qkv = (x.double() @ w.T + bias).reshape(B, N, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scale = HEAD_DIM**-0.5
    s = scale * torch.einsum("bhnd,bhld->bhnl", q, pk.double())
    if gate is not None:
        s = s + alpha.double() * gate(tau.double() * s)
    image = scale * torch.einsum("bhnd,bhmd->bhnm", q, k)
    weights = torch.softmax(torch.cat([s, image], dim=-1), dim=-1)
    out = torch.einsum("bhnk,bhkd->bhnd", weights, torch.cat([pv.double(), v], dim=2))
    return out.transpose(1, 2).reshape(B, N, DIM) @ attn.proj.weight.double().T + attn.proj.bias.double()


def make(seed=0, x_grad=True):
    torch.manual_seed(seed)
    attn = PrefixAttention(DIM, num_heads=HEADS, qkv_bias=True)
    x = torch.randn(B, N, DIM, requires_grad=x_grad)
    pk = torch.randn(B, HEADS, L, HEAD_DIM, requires_grad=True)
    pv = torch.randn(B, HEADS, L, HEAD_DIM, requires_grad=True)
    # values far from the identity gate's fixed point, so a dropped or mis-scaled gate term shows
    tau = torch.full((1, 1), 1.7, requires_grad=True)
    alpha = torch.full((1, 1), 0.6, requires_grad=True)
    return attn, x, pk, pv, tau, alpha


def run_impl(attn, impl, x, prefix):
    attn.fused_attn = impl != "explicit"
    attn.prefix_impl = impl
    return attn(x, prefix=prefix)


def prefix_and_inputs(gate, x, pk, pv, tau, alpha):
    fn = get_gate(gate) if gate else None
    prefix = Prefix(pk, pv, fn, tau if fn else None, alpha if fn else None)
    inputs = [t for t in (x, pk, pv) if t.requires_grad] + ([tau, alpha] if fn else [])
    return prefix, fn, inputs


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_fp32_equals_formula_forward_and_gradients(impl, gate):
    attn, x, pk, pv, tau, alpha = make()
    prefix, fn, inputs = prefix_and_inputs(gate, x, pk, pv, tau, alpha)
    ours = run_impl(attn, impl, x, prefix)
    ref = formula(attn, x, pk, pv, fn, tau, alpha)
    assert (ours.double() - ref).abs().max() < 1e-5
    probe = torch.randn(ref.shape, dtype=torch.float64)
    g_ours = torch.autograd.grad((ours.double() * probe).sum(), inputs)
    g_ref = torch.autograd.grad((ref * probe).sum(), inputs)
    for a, b in zip(g_ours, g_ref):
        assert (a.double() - b).abs().max() < 1e-5


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_gradients_when_only_the_prefix_learns(impl):
    """The first prompted layer of a frozen backbone: image tokens need no gradient, prompts and gate do."""
    attn, x, pk, pv, tau, alpha = make(x_grad=False)
    attn.requires_grad_(False)
    prefix, fn, inputs = prefix_and_inputs("sigmoid", x, pk, pv, tau, alpha)
    ours = run_impl(attn, impl, x, prefix)
    ref = formula(attn, x, pk, pv, fn, tau, alpha)
    for a, b in zip(torch.autograd.grad(ours.sum(), inputs), torch.autograd.grad(ref.sum(), inputs)):
        assert (a.double() - b).abs().max() < 1e-5


@pytest.mark.parametrize("gate", gate_names())
def test_flex_forward_equals_formula(gate):
    """FlexAttention's eager CPU path has no backward: forward only here (its gradients need CUDA)."""
    attn, x, pk, pv, tau, alpha = make()
    prefix, fn, _ = prefix_and_inputs(gate, x, pk, pv, tau, alpha)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "flex_attention called without torch.compile"
        ours = run_impl(attn, "flex", x, prefix)
        ref = formula(attn, x, pk, pv, fn, tau, alpha)
    assert (ours.double() - ref).abs().max() < 1e-5


def bf16_errors(impl, gate):
    """(output error, relative gradient errors) of ``impl`` under bf16 autocast against the fp64 formula."""
    attn, x, pk, pv, tau, alpha = make(seed=1)
    prefix, fn, inputs = prefix_and_inputs(gate, x, pk, pv, tau, alpha)
    ref = formula(attn, x, pk, pv, fn, tau, alpha)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = run_impl(attn, impl, x, prefix)
    assert ours.dtype == torch.bfloat16
    probe = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    g_ours = torch.autograd.grad((ours.double() * probe).sum(), inputs)
    g_ref = torch.autograd.grad((ref * probe).sum(), inputs)
    rel = [float((a.double() - b).norm() / b.norm()) for a, b in zip(g_ours, g_ref)]
    return float((ours.double() - ref).abs().max().detach()), rel


@pytest.mark.parametrize("gate", ["tanh", "sigmoid", "gelu", "linear", None])
@pytest.mark.parametrize("impl", ["sdpa_mask", "lse_merge", "augmented"])
def test_bf16_within_the_formulas_own_bf16_error(impl, gate):
    """In bf16 each fused path is as close to the exact formula as the formula itself evaluated in bf16."""
    out_err, grad_err = bf16_errors(impl, gate)
    base_out, base_grad = bf16_errors("explicit", gate)
    assert out_err <= 2 * base_out + 2e-3
    assert out_err < 2e-2  # bf16 has ~3 significant digits; outputs here are O(1)
    for ours, base in zip(grad_err, base_grad):
        assert ours <= 2 * base + 5e-3
        assert ours < 3e-2


def test_bf16_tolerance_detects_a_missing_gate():
    """The bf16 bound above is tight enough to fail an implementation that ignores the gate."""
    attn, x, pk, pv, tau, alpha = make(seed=1)
    ref = formula(attn, x, pk, pv, get_gate("tanh"), tau, alpha)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ungated = run_impl(attn, "lse_merge", x, Prefix(pk, pv))
    base_out, _ = bf16_errors("explicit", "tanh")
    assert (ungated.double() - ref).abs().max() > 5 * (2 * base_out + 2e-3)


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=DIM, depth=3, num_heads=HEADS, num_classes=0,
                            block_fn=PeftBlock)
    return vit.requires_grad_(False).eval()


@pytest.mark.parametrize("impl", ["sdpa_mask", "lse_merge", "augmented"])
def test_prompted_vit_features_equal_across_implementations(impl):
    """Whole frozen backbone with per-sample prompts and a learned gate: features and the gradients of
    prompts and gate parameters match the explicit path."""
    vit = tiny_vit()
    pool = PromptPool([0, 1], num_tasks=3, length=L, num_heads=HEADS, head_dim=HEAD_DIM, gate="gelu")
    x = torch.randn(4, 3, 16, 16)
    ids = torch.tensor([0, 2, 1, 2])
    results = {}
    for name in ("explicit", impl):
        configure_prefix_attention(vit, name, "cpu")
        for m in vit.modules():
            if isinstance(m, PrefixAttention):
                m.fused_attn = name != "explicit"
        feats = vit_features(vit, x, pool.prefixes_for_ids(ids))
        grads = torch.autograd.grad(feats.sin().sum(), [pool.prompts, pool.gate_params])
        results[name] = (feats, *grads)
    for a, b in zip(results["explicit"], results[impl]):
        assert (a - b).abs().max() < 1e-5


def test_compiled_lse_merge_equals_eager():
    """torch.compile traces the custom autograd merge (aot_eager: graph capture without C++ codegen)."""
    attn, x, pk, pv, tau, alpha = make()
    prefix, _, inputs = prefix_and_inputs("tanh", x, pk, pv, tau, alpha)
    attn.prefix_impl = "lse_merge"
    eager = attn(x, prefix=prefix)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, pk, pv, tau, alpha: attn(x, prefix=Prefix(pk, pv, torch.tanh, tau, alpha)),
                             backend="aot_eager", fullgraph=True)(x, pk, pv, tau, alpha)
    assert (compiled - eager).abs().max() < 1e-6
    for a, b in zip(torch.autograd.grad(compiled.sum(), inputs), torch.autograd.grad(eager.sum(), inputs)):
        assert (a - b).abs().max() < 1e-6


def test_auto_rule_per_device_and_pass():
    assert resolve_prefix_impl("auto", "cpu", grad=True) == "explicit"
    assert resolve_prefix_impl("auto", "cpu", grad=False) == "lse_merge"
    assert resolve_prefix_impl("auto", "cuda", grad=True) == resolve_prefix_impl("auto", "cuda", grad=False) \
        == "augmented"
    assert resolve_prefix_impl("auto", "mps") == "sdpa_mask"
    assert resolve_prefix_impl("explicit", "cuda") == "explicit"
    assert describe_prefix_impl("auto", "cpu") == "auto (explicit with gradients, lse_merge without)"
    with pytest.raises(ValueError, match="choose one of auto, explicit"):
        resolve_prefix_impl("fast", "cpu")


def test_auto_picks_the_pass_implementation_at_call_time(monkeypatch):
    """On CPU ``auto`` runs lse_merge in no-grad passes and the explicit formula when gradients flow."""
    called = []
    for name in ("explicit", "lse_merge"):
        original = {"explicit": attention.explicit_prefix_attention, "lse_merge": attention._FUSED["lse_merge"]}[name]

        def spy(*args, name=name, original=original):
            called.append(name)
            return original(*args)

        if name == "explicit":
            monkeypatch.setattr(attention, "explicit_prefix_attention", spy)
        else:
            monkeypatch.setitem(attention._FUSED, name, spy)
    attn, x, pk, pv, tau, alpha = make(x_grad=False)
    attn.requires_grad_(False)
    prefix = Prefix(pk, pv, torch.tanh, tau, alpha)
    with torch.no_grad():
        attn(x, prefix=prefix)
    attn(x, prefix=prefix)
    assert called == ["lse_merge", "explicit"]


def test_configure_sets_every_layer_and_reports_the_choice():
    vit = tiny_vit()
    assert configure_prefix_attention(vit, "augmented", "cpu") == "augmented"
    assert {m.prefix_impl for m in vit.modules() if isinstance(m, PrefixAttention)} == {"augmented"}
    assert configure_prefix_attention(vit, "auto", "cpu") == "auto"
    assert {m.prefix_impl for m in vit.modules() if isinstance(m, PrefixAttention)} == {"auto"}


def test_a_wrong_kernel_is_refused_not_used(monkeypatch, caplog):
    """An implementation that disagrees with the formula raises when asked for by name; under ``auto``
    the model falls back to the dense-mask path with a warning. Never different numbers in silence."""
    monkeypatch.setitem(attention._FUSED, "lse_merge", attention._concat_sdpa)  # drops the gate term
    vit = tiny_vit()
    with pytest.raises(RuntimeError, match="differs from the formula"):
        configure_prefix_attention(vit, "lse_merge", "cpu")
    with caplog.at_level(logging.WARNING, logger="norga.models.attention"):
        assert configure_prefix_attention(vit, "auto", "cpu") == "sdpa_mask"
    assert "failed its check" in caplog.text
    assert {m.prefix_impl for m in vit.modules() if isinstance(m, PrefixAttention)} == {"sdpa_mask"}


def test_flex_without_a_backward_is_refused_on_cpu():
    with pytest.raises(NotImplementedError):
        configure_prefix_attention(tiny_vit(), "flex", "cpu")
