"""The embedded tiny ViT (norga/assets/tiny_vit_fdsl.safetensors) and the script that builds it."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "norga" / "assets" / "tiny_vit_fdsl.safetensors"
YAML = ROOT / "conf" / "backbone" / "tiny.yaml"
SCRIPT = ROOT / "scripts" / "pretrain_embedded_vit.py"


@pytest.fixture(scope="module")
def script():
    """The pre-training script imported as a module (it is not part of the package)."""
    name = "pretrain_embedded_vit"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def backbone_cfg() -> dict:
    from omegaconf import OmegaConf

    # the ${pkg_asset:...} interpolation is left unresolved: only plain fields are read here
    cfg = OmegaConf.load(YAML)
    return {k: OmegaConf.to_container(cfg[k]) if k in ("model_kwargs", "mean", "std") else cfg[k]
            for k in ("arch", "model_kwargs", "img_size", "mean", "std")}


@pytest.fixture(scope="module")
def tensors_and_meta() -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(ASSET), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _model(backbone_cfg: dict, state: dict | None = None, seed: int = 0) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(backbone_cfg["arch"], pretrained=False, num_classes=0, **backbone_cfg["model_kwargs"])
    if state is not None:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def test_asset_exists_and_is_small():
    assert ASSET.is_file(), "run scripts/pretrain_embedded_vit.py to build it"
    assert ASSET.stat().st_size < 2_000_000


def test_loads_strictly_into_timm_vit(backbone_cfg, tensors_and_meta):
    state, _ = tensors_and_meta
    assert not any(k.startswith("head") for k in state)
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight", "blocks.0.attn.qkv.weight"} <= set(
        state
    )
    model = _model(backbone_cfg, state)
    assert model.num_features == backbone_cfg["model_kwargs"]["embed_dim"]
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, model.num_features)


def test_metadata_matches_config(backbone_cfg, tensors_and_meta, script):
    _, meta = tensors_and_meta
    assert meta["arch"] == backbone_cfg["arch"]
    assert json.loads(meta["model_kwargs"]) == backbone_cfg["model_kwargs"]
    assert backbone_cfg["model_kwargs"]["img_size"] == backbone_cfg["img_size"]
    assert json.loads(meta["mean"]) == pytest.approx(backbone_cfg["mean"])
    assert json.loads(meta["std"]) == pytest.approx(backbone_cfg["std"])
    assert json.loads(meta["model_kwargs"]) == script.MODEL_KWARGS
    for key in ("generator", "seed", "script_version", "linear_probe_digits"):
        assert meta.get(key)
    probe = json.loads(meta["linear_probe_digits"])
    assert probe["pretrained"] > probe["random_init"]


def _ncm_accuracy(feats: np.ndarray, labels: np.ndarray, train: np.ndarray) -> float:
    """Nearest-class-mean (cosine) accuracy on the items not in ``train``."""
    feats = (feats - feats[train].mean(0)) / (feats[train].std(0) + 1e-6)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True) + 1e-12
    means = np.stack([feats[train & (labels == c)].mean(0) for c in range(10)])
    test = ~train
    return float((np.argmax(feats[test] @ means.T, axis=1) == labels[test]).mean())


def test_pretrained_features_beat_random_init(backbone_cfg, tensors_and_meta, script):
    from sklearn.datasets import load_digits

    state, _ = tensors_and_meta
    digits = load_digits()
    # fixed, class-balanced sample: the first 60 digits of each class, 30 for the class means, 30 to test
    idx = np.concatenate([np.flatnonzero(digits.target == c)[:60] for c in range(10)])
    labels = digits.target[idx]
    train = np.zeros(len(idx), bool)
    for c in range(10):
        train[np.flatnonzero(labels == c)[:30]] = True
    grey = np.round(digits.images[idx] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    x = script.upsample_normalise(torch.from_numpy(grey), backbone_cfg["mean"], backbone_cfg["std"])

    acc_pre = _ncm_accuracy(script.extract_features(_model(backbone_cfg, state), x), labels, train)
    acc_rand = _ncm_accuracy(script.extract_features(_model(backbone_cfg, None), x), labels, train)
    assert acc_pre >= acc_rand + 0.10, (acc_pre, acc_rand)


def test_upsampling_is_pil_bicubic(script):
    from PIL import Image

    rng = np.random.default_rng(0)
    grey = (rng.integers(0, 17, size=(20, 8, 8)) * 255 // 16).astype(np.uint8)
    ours = script.pil_resize_uint8(torch.from_numpy(grey), 32).numpy()
    pil = np.stack([np.asarray(Image.fromarray(g, mode="L").resize((32, 32), Image.BICUBIC)) for g in grey])
    np.testing.assert_array_equal(ours, pil)


def test_generator_is_deterministic(script):
    bank_a, bank_b = script.make_glyph_bank(16, seed=3), script.make_glyph_bank(16, seed=3)
    assert torch.equal(bank_a.points, bank_b.points) and torch.equal(bank_a.stroke_id, bank_b.stroke_id)
    labels = torch.arange(16).repeat(2)
    first = script.generate_batch(bank_a, labels, seed=7)
    second = script.generate_batch(bank_b, labels, seed=7)
    assert first.shape == (32, 3, 32, 32)
    assert torch.equal(first, second)
    assert not torch.equal(first, script.generate_batch(bank_a, labels, seed=8))
    counts = script.generate_counts(bank_a, labels, seed=7)
    assert counts.dtype == torch.uint8 and int(counts.max()) <= 16 and int(counts.sum()) > 0
