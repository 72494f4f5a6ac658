"""Prefix-tuning attention with NoRGa's non-linear residual gate, as extensions of timm's ViT.

In a prompted layer the queries attend to ``[prefix keys, image keys]`` with logits

    [ s + alpha * gate(tau * s),  scale * q k^T ],   s = scale * q p_k^T

softmaxed together; values are ``[p_v, v]``. Without a gate (HiDe-Prompt) the prefix logits are just ``s``.
The image-image logits are never modified.

Implementations (all compute the same numbers; ``tests/test_attention*.py`` hold them to the formula):

* ``explicit``: the formula written out (materialises the ``N x (L + N)`` attention matrix).
* ``sdpa_mask``: one SDPA call over ``[prefix, image]`` keys with the gate term as a dense additive mask
  ``(B, H, N, L + N)``; exact but rules out flash kernels and materialises an attention-sized bias.
* ``lse_merge``: the image-image block through the device's SDPA kernel, which also returns its
  log-sum-exp; the small ``N x L`` prefix block computed explicitly in fp32; both merged exactly by their
  log-sum-exps. Backward: the kernel's own backward called with the *merged* output and log-sum-exp (the
  split-KV / ring-attention identity), which gives the image block's exact share including the path
  through its log-sum-exp. Uses PyTorch's private SDPA ops (CPU flash kernel; CUDA memory-efficient kernel).
* ``augmented``: public ``F.scaled_dot_product_attention`` only. The gate term is a per-(query, prefix
  column) bias, written as a dot product: each query gets ``L`` extra coordinates ``bias / scale`` and
  prefix key ``l`` the unit vector ``e_l`` there (image keys get zeros), so the kernel's own logits are the
  gated ones. Head dim grows by ``L`` (padded to a multiple of 8); flash kernels stay usable.
* ``flex``: FlexAttention with the gate as a ``score_mod``; fused only under ``torch.compile`` on CUDA
  (eager FlexAttention is a reference implementation, and it has no backward on CPU).

``auto`` chooses per device and per pass (:data:`AUTO_IMPL`, ``(with gradients, without)``): CPU ->
``explicit`` when gradients flow through the attention and ``lse_merge`` otherwise (on CPU the flash kernel's
backward is slower than the explicit matmuls' in bf16, its forward faster; measured in
``benchmarks/README.md``); CUDA -> ``augmented`` (public API with stock autograd, flash-eligible); any other
device -> ``sdpa_mask``. Without a gate every fused implementation is a single SDPA call over the
concatenated keys (no bias needed). :func:`configure_prefix_attention` sets the choice on a model and first
checks it against the explicit formula on the target device, so a kernel that misbehaves on some device
raises (or, for ``auto``, falls back to ``sdpa_mask`` with a warning) instead of giving different numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import nn

from norga.models.gates import GateFn

log = logging.getLogger(__name__)

PREFIX_IMPLS = ("auto", "explicit", "sdpa_mask", "lse_merge", "augmented", "flex")
# device type -> (implementation when gradients flow through the attention, implementation without)
AUTO_IMPL = {"cpu": ("explicit", "lse_merge"), "cuda": ("augmented", "augmented")}
AUTO_FALLBACK = "sdpa_mask"


@dataclass
class Prefix:
    """Key/value prefixes for one attention layer, one per sample: ``(B, heads, L, head_dim)``.

    ``gate`` is None for plain prefix tuning; otherwise ``tau`` and ``alpha`` are tensors broadcastable
    to the prefix logits ``(B, heads, N, L)``.
    """

    key: torch.Tensor
    value: torch.Tensor
    gate: GateFn | None = None
    tau: torch.Tensor | None = None
    alpha: torch.Tensor | None = None


def prefix_logits(q: torch.Tensor, prefix: Prefix, scale: float) -> torch.Tensor:
    """The (gated) logits of queries ``q`` (B, H, N, D) against the prefix keys: (B, H, N, L)."""
    s = (q * scale) @ prefix.key.transpose(-2, -1)
    if prefix.gate is None:
        return s
    return s + prefix.alpha * prefix.gate(prefix.tau * s)


def _gate_bias_fp32(q: torch.Tensor, prefix: Prefix, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, alpha * gate(tau * s))`` in fp32 whatever the autocast state: the prefix block is small
    (``N x L``), so full precision there costs nothing and keeps bf16 errors to the image block."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        s = (q.float() * scale) @ prefix.key.float().transpose(-2, -1)
        if prefix.gate is None:
            return s, torch.zeros_like(s)
        return s, prefix.alpha.float() * prefix.gate(prefix.tau.float() * s)


def explicit_prefix_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: Prefix, scale: float
) -> torch.Tensor:
    """The formula written out: one softmax over ``[prefix logits, image logits]``. The reference path."""
    image = (q * scale) @ k.transpose(-2, -1)
    attn = torch.cat([prefix_logits(q, prefix, scale), image], dim=-1).softmax(dim=-1)
    return attn @ torch.cat([prefix.value, v], dim=2)


def _concat_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: Prefix, scale: float) -> torch.Tensor:
    """Ungated prefix tuning: one SDPA over the concatenated keys, no mask (flash kernels apply)."""
    keys = torch.cat([prefix.key.to(k.dtype), k], dim=2)
    values = torch.cat([prefix.value.to(v.dtype), v], dim=2)
    return F.scaled_dot_product_attention(q, keys, values, scale=scale)


def mask_prefix_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: Prefix, scale: float
) -> torch.Tensor:
    """One SDPA call whose additive float mask carries the gate term on the prefix columns."""
    if prefix.gate is None:
        return _concat_sdpa(q, k, v, prefix, scale)
    keys = torch.cat([prefix.key.to(k.dtype), k], dim=2)
    values = torch.cat([prefix.value.to(v.dtype), v], dim=2)
    s = (q * scale) @ prefix.key.to(q.dtype).transpose(-2, -1)
    bias = (prefix.alpha * prefix.gate(prefix.tau * s)).to(q.dtype)
    b, h, n, _ = q.shape
    mask = torch.cat([bias, bias.new_zeros(b, h, n, k.shape[2])], dim=-1)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)


# ---- lse_merge: image block through the kernel (output + log-sum-exp), prefix block explicit ----------------
def _kernel_forward(q, k, v, scale):
    """``(out, lse, extra)`` of plain attention over the image keys, from the device's SDPA kernel."""
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)
        return out, lse, ()
    if q.device.type == "cuda":
        out, lse, seed, offset = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, None, True, 0.0, False, scale=scale)
        # the kernel pads the log-sum-exp to a multiple of 32 rows; its backward expects that layout back
        return out, lse[..., : q.shape[2]], (lse.shape[-1], seed, offset)
    raise NotImplementedError(f"lse_merge has no kernel returning a log-sum-exp on {q.device.type}; "
                              f"use train.attention=augmented or sdpa_mask")


def _kernel_backward(grad, q, k, v, out, lse, extra, scale, needs):
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad, q, k, v, out, lse, 0.0, False, scale=scale)
    padded, seed, offset = extra
    lse = F.pad(lse, (0, padded - lse.shape[-1]))
    dq, dk, dv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
        grad, q, k, v, None, out, lse, seed, offset, 0.0, [*needs, False], False, scale=scale)
    return dq, dk, dv


class _LSEMerge(torch.autograd.Function):
    """``softmax([prefix logits, image logits]) @ [p_v, v]`` from the prefix block's ``(o_p, lse_p)``.

    Forward: ``out = exp(lse_i - lse) o_i + exp(lse_p - lse) o_p`` with ``lse = logaddexp(lse_i, lse_p)``.
    Backward: with the merged ``out`` and ``lse`` the kernel recomputes the image block's true share of the
    joint softmax, ``exp(S - lse)``, and ``D = rowsum(grad * out)`` of the joint softmax, so its gradients
    for q, k, v are those of the joint attention. The prefix block gets ``grad_o_p = w_p grad`` and
    ``grad_lse_p = w_p <grad, o_p - out>``; autograd carries them through the gate.
    """

    @staticmethod
    def forward(ctx, q, k, v, o_p, lse_p, scale):
        o_i, lse_i, extra = _kernel_forward(q, k, v, scale)
        lse = torch.logaddexp(lse_i, lse_p)
        w_p = (lse_p - lse).exp().unsqueeze(-1)
        out = ((lse_i - lse).exp().unsqueeze(-1) * o_i.float() + w_p * o_p).to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse, o_p, w_p)
        ctx.extra, ctx.scale = extra, scale
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse, o_p, w_p = ctx.saved_tensors
        dq = dk = dv = None
        needs = ctx.needs_input_grad[:3]
        if any(needs):
            dq, dk, dv = _kernel_backward(grad.contiguous(), q, k, v, out, lse, ctx.extra, ctx.scale, needs)
        grad_o_p = w_p * grad.float()
        grad_lse_p = (grad_o_p * (o_p - out.float())).sum(-1)
        return dq, dk, dv, grad_o_p, grad_lse_p, None


def lse_merge_prefix_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: Prefix, scale: float
) -> torch.Tensor:
    """Image block through the SDPA kernel, prefix block explicit (fp32), merged by log-sum-exp."""
    s, bias = _gate_bias_fp32(q, prefix, scale)
    with torch.autocast(device_type=q.device.type, enabled=False):
        logits = s + bias
        o_p = logits.softmax(dim=-1) @ prefix.value.float()
        lse_p = logits.logsumexp(dim=-1)
    return _LSEMerge.apply(q, k, v, o_p, lse_p, scale)


# ---- augmented: the gate bias as extra key/query coordinates, public SDPA only --------------------------------
def augmented_prefix_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: Prefix, scale: float
) -> torch.Tensor:
    """One SDPA call over keys ``[[p_k, I_L], [k, 0]]`` and queries ``[q, bias / scale]``: the kernel's
    logits are ``s + bias`` on prefix columns and ``scale q k^T`` elsewhere, exactly the gated formula."""
    b, h, n, d = q.shape
    length = prefix.key.shape[2]
    width = -(-(d + length) // 8) * 8 - d  # L one-hot columns, zero-padded so head dims stay kernel-aligned
    _, bias = _gate_bias_fp32(q, prefix, scale)
    extra_q = F.pad(bias / scale, (0, width - length)).to(q.dtype)
    eye = torch.eye(length, width, dtype=q.dtype, device=q.device).expand(b, h, length, width)
    keys = torch.cat([torch.cat([prefix.key.to(q.dtype), eye], dim=-1), F.pad(k, (0, width))], dim=2)
    # values padded too: flash kernels want one head dim for q, k and v
    values = F.pad(torch.cat([prefix.value.to(v.dtype), v], dim=2), (0, width))
    out = F.scaled_dot_product_attention(torch.cat([q, extra_q], dim=-1), keys, values, scale=scale)
    return out[..., :d]


# ---- flex: the gate as a score modification ------------------------------------------------------------------
def flex_prefix_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: Prefix, scale: float
) -> torch.Tensor:
    """FlexAttention over ``[prefix, image]`` keys with ``score + alpha * gate(tau * score)`` on the prefix
    columns. Fused only when compiled (CUDA); eager it is PyTorch's reference implementation."""
    from torch.nn.attention.flex_attention import flex_attention

    if prefix.gate is None:
        return _concat_sdpa(q, k, v, prefix, scale)
    if prefix.tau.numel() != 1 or prefix.alpha.numel() != 1:
        raise ValueError("flex prefix attention supports scalar tau and alpha per layer")
    length, gate = prefix.key.shape[2], prefix.gate
    tau, alpha = prefix.tau.reshape(()), prefix.alpha.reshape(())

    def gated(score, b, h, q_idx, kv_idx):
        return torch.where(kv_idx < length, score + alpha * gate(tau * score), score)

    keys = torch.cat([prefix.key.to(k.dtype), k], dim=2)
    values = torch.cat([prefix.value.to(v.dtype), v], dim=2)
    return flex_attention(q, keys, values, score_mod=gated, scale=scale)


_FUSED = {
    "sdpa_mask": mask_prefix_attention,
    "lse_merge": lse_merge_prefix_attention,
    "augmented": augmented_prefix_attention,
    "flex": flex_prefix_attention,
}


def resolve_prefix_impl(impl: str, device: torch.device | str, grad: bool = True) -> str:
    """The implementation ``impl`` names on ``device`` for a pass with (``grad``) or without gradients through
    the attention: ``auto`` follows :data:`AUTO_IMPL`."""
    if impl not in PREFIX_IMPLS:
        raise ValueError(f"unknown prefix attention {impl!r}; choose one of {', '.join(PREFIX_IMPLS)}")
    if impl != "auto":
        return impl
    with_grad, without = AUTO_IMPL.get(torch.device(device).type, (AUTO_FALLBACK, AUTO_FALLBACK))
    return with_grad if grad else without


def _needs_grad(q: torch.Tensor, prefix: Prefix) -> bool:
    tensors = (q, prefix.key, prefix.value, prefix.tau, prefix.alpha)
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def fused_prefix_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: Prefix, scale: float, impl: str = "auto"
) -> torch.Tensor:
    """The formula through a fused implementation (module docstring); ``auto`` picks one per device and
    per pass (with or without gradients)."""
    impl = resolve_prefix_impl(impl, q.device, impl == "auto" and _needs_grad(q, prefix))
    if impl == "explicit":
        return explicit_prefix_attention(q, k, v, prefix, scale)
    if prefix.gate is None:
        return _concat_sdpa(q, k, v, prefix, scale)
    return _FUSED[impl](q, k, v, prefix, scale)


class PrefixAttention(Attention):
    """timm's Attention that also accepts a :class:`Prefix`; without one it is timm's own forward.

    ``fused_attn=False`` (timm's switch) computes the explicit formula; otherwise ``prefix_impl`` (one of
    :data:`PREFIX_IMPLS`, set by :func:`configure_prefix_attention`) picks the fused implementation.
    """

    prefix_impl: str = "auto"

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        prefix: Prefix | None = None,
    ) -> torch.Tensor:
        if prefix is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None or is_causal:
            raise NotImplementedError("prefix attention does not combine with attention masks")
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn:
            x = fused_prefix_attention(q, k, v, prefix, self.scale, self.prefix_impl)
        else:
            x = explicit_prefix_attention(q, k, v, prefix, self.scale)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


# ---- choosing an implementation for a model ------------------------------------------------------------------
def check_prefix_attention(impl: str, device: torch.device | str, atol: float = 1e-2) -> float:
    """Largest difference (output and every gradient) between ``impl`` and the explicit formula on a small
    random gated problem in fp32 on ``device``; raises RuntimeError above ``atol``.

    A guard against a kernel that misbehaves on some device (TF32 matmuls stay well inside ``atol``; a wrong
    merge or a missing gradient path is off by O(0.1)). Exactness to 1e-5 is the test suite's job.
    """
    device = torch.device(device)
    if impl == "auto":
        return max(check_prefix_attention(resolve_prefix_impl(impl, device, grad), device, atol)
                   for grad in (True, False))
    gen = torch.Generator().manual_seed(0)
    b, h, n, length, d = 2, 2, 17, 3, 16

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device).requires_grad_()

    q, k, v = rand(b, h, n, d), rand(b, h, n, d), rand(b, h, n, d)
    pk, pv = rand(b, h, length, d), rand(b, h, length, d)
    tau = torch.full((1, 1), 1.7, device=device, requires_grad=True)
    alpha = torch.full((1, 1), 0.6, device=device, requires_grad=True)
    inputs = [q, k, v, pk, pv, tau, alpha]
    prefix = Prefix(pk, pv, torch.tanh, tau, alpha)
    scale = d**-0.5
    ours = fused_prefix_attention(q, k, v, prefix, scale, impl)
    ref = explicit_prefix_attention(q, k, v, prefix, scale)
    weights = torch.randn(ref.shape, generator=gen).to(device)
    with torch.no_grad():  # the inference path too (FlexAttention on CPU has only this one)
        errors = [(fused_prefix_attention(q, k, v, prefix, scale, impl) - ref).abs().max()]
    errors.append((ours - ref).abs().max())
    g_ours = torch.autograd.grad((ours * weights).sum(), inputs, allow_unused=True)
    g_ref = torch.autograd.grad((ref * weights).sum(), inputs)
    # a gradient path that is missing altogether counts as an infinite error
    errors += [(a - b).abs().max() if a is not None else torch.tensor(float("inf"), device=device)
               for a, b in zip(g_ours, g_ref)]
    worst = float(torch.stack(errors).detach().max())
    if not worst <= atol:  # also catches NaN
        raise RuntimeError(f"prefix attention {impl!r} differs from the formula on {device} by {worst:.3g} "
                           f"(> {atol}); use train.attention=sdpa_mask or explicit")
    return worst


def describe_prefix_impl(impl: str, device: torch.device | str) -> str:
    """What ``impl`` runs on ``device``, e.g. ``auto (explicit with gradients, lse_merge without)``."""
    if impl != "auto":
        return impl
    with_grad, without = (resolve_prefix_impl(impl, device, grad) for grad in (True, False))
    if with_grad == without:
        return f"auto ({with_grad})"
    return f"auto ({with_grad} with gradients, {without} without)"


def configure_prefix_attention(
    model: nn.Module, impl: str, device: torch.device | str, check: bool = True
) -> str:
    """Set the prefix-attention implementation of every :class:`PrefixAttention` in ``model`` (``auto`` stays
    ``auto``: it resolves per pass); returns what was set.

    With ``check`` the choice (for ``auto``: each implementation it can resolve to on ``device``) is first
    verified against the formula on ``device`` (:func:`check_prefix_attention`): a failure raises for a
    named implementation, and for ``auto`` sets ``sdpa_mask`` with a warning.
    """
    chosen = impl
    resolve_prefix_impl(impl, device)  # validates the name
    if check and impl != "explicit":
        try:
            check_prefix_attention(impl, device)
        except (RuntimeError, NotImplementedError) as err:
            if impl != "auto":
                raise
            log.warning("prefix attention %s failed its check on %s (%s); using %s",
                        describe_prefix_impl(impl, device), torch.device(device), err, AUTO_FALLBACK)
            chosen = AUTO_FALLBACK
    for module in model.modules():
        if isinstance(module, PrefixAttention):
            module.prefix_impl = chosen
    return chosen
