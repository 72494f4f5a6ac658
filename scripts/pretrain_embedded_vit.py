"""Pre-train the small embedded ViT backbone without any download and without the digits data.

Formula-driven supervised pre-training (FDSL): every class is a procedurally generated "glyph" (1-3 pen
strokes: cubic Bezier curves, elliptical arcs, polylines, drawn from a per-class formula seeded by the class
id); every sample is a fresh instance of its class' glyph with random stroke thickness, per-stroke jitter,
smooth elastic warp and a global affine.  Instances are rendered the way the UCI/sklearn handwritten digits
were made (binary 32x32 bitmap, ink counted in 4x4 blocks -> 8x8 image with values 0..16), then upsampled
back to 32x32 exactly like the framework does (uint8 -> PIL bicubic resize -> [0, 1] -> normalise), so the
pre-training inputs share the low-resolution look of the downstream data.  The 8x8 digits are used ONLY for
the final linear-probe report.

Output: ``norga/assets/tiny_vit_fdsl.safetensors``: the backbone's state dict (timm key names, no head,
float16) plus metadata (architecture kwargs, mean/std, generator description, seed, version, probe result).

Run: ``python scripts/pretrain_embedded_vit.py`` (CPU, 2 threads, ~12-15 minutes).
"""

import argparse
import functools
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SCRIPT_VERSION = "1"
ARCH = "vit_tiny_patch16_224"
MODEL_KWARGS: dict = {
    "img_size": 32,
    "patch_size": 4,
    "embed_dim": 96,
    "depth": 6,
    "num_heads": 4,
    "mlp_ratio": 4.0,
}
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "norga" / "assets" / "tiny_vit_fdsl.safetensors"

BITMAP = 32  # side of the binary bitmap a glyph is drawn on (as in the UCI digits)
BLOCK = 4  # ink is counted in BLOCK x BLOCK cells -> 8x8 image with values 0..16
LOW = BITMAP // BLOCK
POINTS_PER_STROKE = 20
MAX_STROKES = 3

GENERATOR_DESCRIPTION = (
    "glyph-FDSL v1: each class = 1-3 strokes (cubic Bezier / elliptical arc / 2-3 segment polyline; later "
    "strokes start on an earlier stroke with p=0.5) from a class-seeded formula; each instance = per-stroke "
    "affine jitter + sinusoidal elastic warp + global rotation/shear/aspect, normalised to fill the 32-px "
    "height, stroke diameter U(2.5, 6.5) px, binary 32x32 bitmap -> 4x4 ink counts (0..16) -> uint8 "
    "round(c*255/16) -> PIL bicubic 8->32 -> /255 -> normalise; light strokes on a dark background"
)


# ----------------------------------------------------------------------------------------------------------
# Glyph generator
# ----------------------------------------------------------------------------------------------------------
@dataclass
class GlyphBank:
    """The per-class stroke formulas, already sampled to polylines in the unit box [-1, 1]^2."""

    points: torch.Tensor  # (C, MAX_STROKES, POINTS_PER_STROKE, 2), float32
    stroke_id: torch.Tensor  # (C, MAX_STROKES) int64; unused stroke slots repeat stroke 0 (same id -> same ink)


def _bezier(rng: np.random.Generator, t: np.ndarray, start: np.ndarray | None) -> np.ndarray:
    ctrl = rng.uniform(-1.0, 1.0, size=(4, 2))
    if start is not None:
        ctrl[0] = start
    b = np.stack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], axis=1)
    return b @ ctrl


def _arc(rng: np.random.Generator, t: np.ndarray, start: np.ndarray | None) -> np.ndarray:
    radii = rng.uniform(0.25, 0.8, size=2)
    rot = rng.uniform(0.0, math.pi)
    theta0 = rng.uniform(0.0, 2 * math.pi)
    sweep = rng.uniform(0.5 * math.pi, 2.0 * math.pi) * rng.choice([-1.0, 1.0])
    ang = theta0 + sweep * t
    local = np.stack([radii[0] * np.cos(ang), radii[1] * np.sin(ang)], axis=1)
    c, s = math.cos(rot), math.sin(rot)
    local = local @ np.array([[c, s], [-s, c]])
    centre = rng.uniform(-0.4, 0.4, size=2) if start is None else start - local[0]
    return local + centre


def _polyline(rng: np.random.Generator, t: np.ndarray, start: np.ndarray | None) -> np.ndarray:
    verts = rng.uniform(-1.0, 1.0, size=(int(rng.integers(3, 5)), 2))
    if start is not None:
        verts[0] = start
    seg_len = np.linalg.norm(np.diff(verts, axis=0), axis=1) + 1e-6
    cum = np.concatenate([[0.0], np.cumsum(seg_len)]) / seg_len.sum()
    return np.stack([np.interp(t, cum, verts[:, 0]), np.interp(t, cum, verts[:, 1])], axis=1)


def make_glyph_bank(num_classes: int, seed: int) -> GlyphBank:
    """Sample one stroke formula per class; class ``c`` depends only on ``(seed, c)``."""
    t = np.linspace(0.0, 1.0, POINTS_PER_STROKE)
    makers = (_bezier, _arc, _polyline)
    points = np.zeros((num_classes, MAX_STROKES, POINTS_PER_STROKE, 2), dtype=np.float32)
    stroke_id = np.zeros((num_classes, MAX_STROKES), dtype=np.int64)
    for c in range(num_classes):
        rng = np.random.default_rng([seed, c])
        n = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
        strokes: list[np.ndarray] = []
        for k in range(n):
            start = None
            if k > 0 and rng.random() < 0.5:  # connected pen strokes, like most handwritten characters
                prev = strokes[int(rng.integers(0, k))]
                start = prev[int(rng.integers(0, POINTS_PER_STROKE))]
            maker = makers[int(rng.choice(3, p=[0.45, 0.3, 0.25]))]
            strokes.append(np.clip(maker(rng, t, start), -1.5, 1.5))
        for k in range(MAX_STROKES):
            points[c, k] = strokes[k] if k < n else strokes[0]
            stroke_id[c, k] = k if k < n else 0
    return GlyphBank(torch.from_numpy(points), torch.from_numpy(stroke_id))


def _rotation_shear(angle: torch.Tensor, shear: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """Batch of 2x2 matrices rot(angle) @ shear @ diag(sx, sy), applied to row vectors as ``p @ M.T``."""
    c, s = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    one, zero = torch.ones_like(shear), torch.zeros_like(shear)
    sh = torch.stack([torch.stack([one, shear], -1), torch.stack([zero, one], -1)], -2)
    sc = torch.stack([torch.stack([sx, zero], -1), torch.stack([zero, sy], -1)], -2)
    return rot @ sh @ sc


def _uniform(shape: tuple[int, ...], lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen)


def render_glyph_counts(bank: GlyphBank, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Draw one random instance per label; returns ink counts ``(B, 8, 8)`` uint8 in 0..16."""
    b = labels.shape[0]
    pts = bank.points[labels]  # (B, S, P, 2)
    sid = bank.stroke_id[labels]  # (B, S)
    # per-stroke jitter (drawn per stroke id so that repeated slots stay identical to stroke 0)
    m = _rotation_shear(
        _uniform((b, MAX_STROKES), -0.2, 0.2, gen),
        _uniform((b, MAX_STROKES), -0.15, 0.15, gen),
        _uniform((b, MAX_STROKES), 0.85, 1.15, gen),
        _uniform((b, MAX_STROKES), 0.85, 1.15, gen),
    )
    shift = _uniform((b, MAX_STROKES, 2), -0.12, 0.12, gen)
    m = torch.gather(m, 1, sid[:, :, None, None].expand(-1, -1, 2, 2))
    shift = torch.gather(shift, 1, sid[:, :, None].expand(-1, -1, 2))
    centre = pts.mean(dim=2, keepdim=True)
    pts = (pts - centre) @ m.transpose(-1, -2) + centre + shift[:, :, None, :]
    # smooth elastic warp: a few random low-frequency sinusoids
    freq = _uniform((b, 3, 2, 2), -2.5, 2.5, gen)
    phase = _uniform((b, 3, 2), 0.0, 2 * math.pi, gen)
    amp = _uniform((b, 3, 2), -0.06, 0.06, gen)
    flat = pts.reshape(b, -1, 2)
    arg = torch.einsum("bnd,bkjd->bnkj", flat, freq) + phase[:, None]
    flat = flat + (amp[:, None] * torch.sin(arg)).sum(dim=2)
    # global affine
    g = _rotation_shear(
        _uniform((b,), -0.25, 0.25, gen),
        _uniform((b,), -0.35, 0.35, gen),
        _uniform((b,), 0.7, 1.3, gen),
        torch.ones(b),
    )
    flat = flat @ g.transpose(-1, -2)
    # normalise to the digits' framing: the ink spans the bitmap's height (all 8 rows of the 8x8 image are
    # inked in every sklearn digit) and is narrower than tall; wide glyphs are squeezed horizontally
    diam = _uniform((b,), 2.5, 6.5, gen)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    size = (hi - lo).clamp_min(1e-3)
    target_h = _uniform((b,), BITMAP - 2.0, BITMAP + 0.5, gen) - diam
    max_w = _uniform((b,), 16.0, BITMAP - 4.0, gen) - diam
    sy = target_h / size[:, 1]
    sx = torch.minimum(sy, max_w / size[:, 0])
    sy = torch.minimum(sy, 3.0 * sx)  # flat glyphs (e.g. a dash) are not blown up to full height
    offset = BITMAP / 2 + _uniform((b, 2), -1.0, 1.0, gen)
    flat = (flat - (lo + hi)[:, None] / 2) * torch.stack([sx, sy], -1)[:, None] + offset[:, None]
    # rasterise: a pixel is ink if its centre is within diam/2 of a stroke segment (x and y kept apart:
    # (B, HW, segments) temporaries instead of (B, HW, segments, 2) keep this cheaper than a training step)
    pts = flat.reshape(b, MAX_STROKES, POINTS_PER_STROKE, 2)
    a = pts[:, :, :-1].reshape(b, 1, -1, 2)
    d = pts[:, :, 1:].reshape(b, 1, -1, 2) - a
    ax, ay, dx, dy = a[..., 0], a[..., 1], d[..., 0], d[..., 1]
    coords = torch.arange(BITMAP, dtype=torch.float32) + 0.5
    qx = coords.repeat(BITMAP)[None, :, None]  # pixel centres in row-major order: x varies fastest
    qy = coords.repeat_interleave(BITMAP)[None, :, None]
    px, py = qx - ax, qy - ay  # (B, HW, M)
    t = ((px * dx + py * dy) / (dx * dx + dy * dy).clamp_min(1e-6)).clamp_(0.0, 1.0)
    px.sub_(t * dx)
    py.sub_(t * dy)
    dist2 = (px.square_() + py.square_()).amin(dim=2)  # (B, HW)
    ink = (dist2 <= (diam[:, None] / 2) ** 2).float().reshape(b, 1, BITMAP, BITMAP)
    counts = F.avg_pool2d(ink, BLOCK) * (BLOCK * BLOCK)
    return counts[:, 0].round().to(torch.uint8)


_PIL_PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling (32 - 8 - 2)


@functools.lru_cache(maxsize=8)
def pil_bicubic_coeffs(src: int = LOW, dst: int = BITMAP) -> torch.Tensor:
    """Pillow's fixed-point bicubic (a=-0.5) resampling matrix ``(dst, src)`` for 8-bit images.

    Replicates ``Resample.c`` (``precompute_coeffs`` + ``normalize_coeffs_8bpc``) so that
    :func:`pil_resize_uint8` is bit-exact with ``PIL.Image.resize(..., BICUBIC)`` on mode ``L``/``RGB``.
    """

    def cubic(x: float, a: float = -0.5) -> float:
        x = abs(x)
        if x < 1.0:
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        if x < 2.0:
            return (((x - 5.0) * x + 8.0) * x - 4.0) * a
        return 0.0

    scale = src / dst
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    out = np.zeros((dst, src), dtype=np.int64)
    for i in range(dst):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        n = min(int(centre + support + 0.5), src) - lo
        w = [cubic((j + lo - centre + 0.5) / filterscale) for j in range(n)]
        total = sum(w)
        for j in range(n):
            k = w[j] / total if total != 0.0 else w[j]
            out[i, lo + j] = int(k * (1 << _PIL_PRECISION_BITS) + (0.5 if k >= 0 else -0.5))
    return torch.from_numpy(out)


def pil_resize_uint8(img: torch.Tensor, size: int = BITMAP) -> torch.Tensor:
    """Bit-exact batched ``PIL.Image.resize((size, size), BICUBIC)`` of ``(B, h, w)`` uint8 images.

    Pillow resamples horizontally first and rounds/clips to uint8 in between, hence two integer passes.
    """
    kh = pil_bicubic_coeffs(img.shape[-1], size)
    kv = pil_bicubic_coeffs(img.shape[-2], size)
    half = 1 << (_PIL_PRECISION_BITS - 1)
    tmp = torch.div(img.long() @ kh.T + half, 1 << _PIL_PRECISION_BITS, rounding_mode="floor").clamp(0, 255)
    out = torch.div(kv @ tmp + half, 1 << _PIL_PRECISION_BITS, rounding_mode="floor").clamp(0, 255)
    return out.to(torch.uint8)


def counts_to_uint8(counts: torch.Tensor) -> torch.Tensor:
    """Digits-style ink counts 0..16 -> grey uint8 0..255 (as the framework's digits loader does)."""
    return (counts.float() * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8)


def upsample_normalise(grey8: torch.Tensor, mean: tuple = MEAN, std: tuple = STD) -> torch.Tensor:
    """``(B, 8, 8)`` uint8 -> ``(B, 3, 32, 32)`` float: PIL bicubic resize (uint8), ToTensor, Normalize."""
    x = (pil_resize_uint8(grey8, BITMAP).float() / 255.0)[:, None].expand(-1, 3, -1, -1)
    mean_t = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    return ((x - mean_t) / std_t).contiguous()


def generate_counts(bank: GlyphBank, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Deterministic ink counts ``(B, 8, 8)`` uint8 (0..16) of one glyph instance per label, given ``seed``."""
    return render_glyph_counts(bank, labels, torch.Generator().manual_seed(seed))


def generate_batch(
    bank: GlyphBank, labels: torch.Tensor, seed: int, mean: tuple = MEAN, std: tuple = STD
) -> torch.Tensor:
    """Deterministic batch of normalised ``(B, 3, 32, 32)`` images for ``labels``, given ``seed``."""
    return upsample_normalise(counts_to_uint8(generate_counts(bank, labels, seed)), mean, std)


# ----------------------------------------------------------------------------------------------------------
# Model, digits probe
# ----------------------------------------------------------------------------------------------------------
def build_model(num_classes: int = 0, seed: int = 0) -> torch.nn.Module:
    """The timm VisionTransformer of this backbone (``num_classes=0``: no head), seeded init."""
    import timm

    torch.manual_seed(seed)
    return timm.create_model(ARCH, pretrained=False, num_classes=num_classes, **MODEL_KWARGS)


def digits_tensors(mean: tuple = MEAN, std: tuple = STD) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """sklearn digits through the framework's pipeline -> (images (N,3,32,32), raw pixels (N,64), labels).

    grey 8x8 (0..16 scaled to 0..255, uint8) -> PIL -> RGB -> Resize(32, bicubic) -> ToTensor -> Normalize.
    """
    from PIL import Image
    from sklearn.datasets import load_digits
    from torchvision import transforms

    digits = load_digits()
    grey = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    tf = transforms.Compose(
        [
            transforms.Resize(BITMAP, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    x = torch.stack([tf(Image.fromarray(g, mode="L").convert("RGB")) for g in grey])
    return x, digits.data.astype(np.float32), digits.target.astype(np.int64)


@torch.no_grad()
def extract_features(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Frozen [CLS] features after the final norm (``forward_head(pre_logits=True)``)."""
    model.eval()
    feats = [
        model.forward_head(model.forward_features(x[i : i + batch_size]), pre_logits=True)
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(feats).numpy()


def linear_probe(feats: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Standardised logistic regression on a stratified 80/20 split; returns test accuracy (percent)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr, xte, ytr, yte = train_test_split(feats, labels, test_size=0.2, stratify=labels, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    clf.fit(xtr, ytr)
    return 100.0 * float(clf.score(xte, yte))


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Pre-training hyper-parameters (all of them end up in the file's metadata)."""

    seed: int = 0
    num_classes: int = 1000
    steps: int = 1400
    batch_size: int = 256
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 100
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    # weight of the auxiliary loss: a linear head on the [CLS] feature regresses the instance's 8x8 ink map
    recon_weight: float = 10.0


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to ``min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def pretrain(cfg: TrainConfig, log_every: int = 50) -> torch.nn.Module:
    """Train the ViT on freshly generated glyph batches; returns the model (its heads are thrown away).

    Loss: cross-entropy over the glyph classes (label smoothing) on the [CLS] token, plus ``recon_weight``
    times the MSE of a linear read-out of the same feature against the instance's own 8x8 ink map (0..1).
    The class loss asks for features invariant to the instance jitter; the read-out keeps where the ink is
    linearly available, which classification alone discards early in training.
    """
    bank = make_glyph_bank(cfg.num_classes, cfg.seed)
    model = build_model(cfg.num_classes, cfg.seed)
    recon_head = torch.nn.Linear(model.num_features, LOW * LOW)
    params = list(model.named_parameters()) + [(f"recon_head.{n}", p) for n, p in recon_head.named_parameters()]
    decay = [p for n, p in params if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in params if p.ndim < 2 or "pos_embed" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    label_gen = torch.Generator().manual_seed(cfg.seed + 1)
    model.train()
    t0 = time.time()
    run = {"ce": 0.0, "mse": 0.0, "acc": 0.0}
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        labels = torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=label_gen)
        counts = generate_counts(bank, labels, seed=cfg.seed * 1_000_003 + step)
        x = upsample_normalise(counts_to_uint8(counts))
        feat = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model.head(feat)
        ce = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
        mse = F.mse_loss(recon_head(feat), counts.reshape(len(labels), -1).float() / 16.0)
        loss = ce + cfg.recon_weight * mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], cfg.grad_clip)
        opt.step()
        run["ce"] += ce.item()
        run["mse"] += mse.item()
        run["acc"] += (logits.argmax(1) == labels).float().mean().item()
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            n = (step % log_every) + 1
            el = time.time() - t0
            print(
                f"step {step + 1:5d}/{cfg.steps}  ce {run['ce'] / n:.3f}  mse {run['mse'] / n:.4f}  "
                f"train-acc {100 * run['acc'] / n:5.1f}%  lr {lr_at(step, cfg):.2e}  "
                f"{el:5.0f}s elapsed, ~{el / (step + 1) * (cfg.steps - step - 1):.0f}s left",
                flush=True,
            )
            run = dict.fromkeys(run, 0.0)
    return model


def backbone_state_dict(model: torch.nn.Module, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The backbone's tensors under timm's key names, head dropped, cast to ``dtype``."""
    return {
        k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items() if not k.startswith("head")
    }


def main(argv: list[str] | None = None) -> None:
    """Pre-train, probe on digits (pre-trained vs random init vs raw pixels), write the safetensors file."""
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--num-classes", type=int, default=TrainConfig.num_classes)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--probe-per-class", type=int, default=None,
                        help="probe on the first N digits of each class only (quick checks; default: all 1797)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = TrainConfig(seed=args.seed, steps=args.steps, num_classes=args.num_classes, batch_size=args.batch_size)
    print(f"arch {ARCH} {json.dumps(MODEL_KWARGS)}; config {json.dumps(asdict(cfg))}", flush=True)
    t0 = time.time()
    model = pretrain(cfg)
    train_s = time.time() - t0
    print(f"pre-training took {train_s:.0f}s", flush=True)

    # the stored weights are float16: probe exactly what is shipped
    state = backbone_state_dict(model)
    shipped = build_model(0, cfg.seed)
    shipped.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    x, raw, y = digits_tensors()
    if args.probe_per_class is not None:
        keep = np.concatenate([np.flatnonzero(y == c)[: args.probe_per_class] for c in np.unique(y)])
        x, raw, y = x[torch.from_numpy(keep)], raw[keep], y[keep]
    acc_pre = linear_probe(extract_features(shipped, x), y, cfg.seed)
    acc_rand = linear_probe(extract_features(build_model(0, cfg.seed), x), y, cfg.seed)
    acc_raw = linear_probe(raw, y, cfg.seed)
    print("digits linear probe (logistic regression, stratified 80/20 split):")
    print(f"  pre-trained frozen [CLS]  {acc_pre:6.2f}%")
    print(f"  random-init frozen [CLS]  {acc_rand:6.2f}%")
    print(f"  raw 8x8 pixels            {acc_raw:6.2f}%")

    probe = {
        "pretrained": round(acc_pre, 2),
        "random_init": round(acc_rand, 2),
        "raw_pixels": round(acc_raw, 2),
        "samples": len(y),
        "protocol": "sklearn digits, stratified 80/20 split (random_state=seed), StandardScaler + "
        "LogisticRegression(max_iter=5000) on the [CLS] token after the final norm",
    }
    metadata = {
        "arch": ARCH,
        "model_kwargs": json.dumps(MODEL_KWARGS),
        "mean": json.dumps(list(MEAN)),
        "std": json.dumps(list(STD)),
        "generator": GENERATOR_DESCRIPTION,
        "seed": str(cfg.seed),
        "train_config": json.dumps(asdict(cfg)),
        "script": "scripts/pretrain_embedded_vit.py",
        "script_version": SCRIPT_VERSION,
        "linear_probe_digits": json.dumps(probe),
        "train_wall_time_s": f"{train_s:.0f}",
        "torch_version": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata=metadata)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {len(state)} tensors)")


if __name__ == "__main__":
    main()
