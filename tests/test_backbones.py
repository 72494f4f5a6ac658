"""Backbone weights: each real checkpoint layout (key names and nesting, on a small ViT) loads exactly
through the real ``conf/backbone`` files; renamed keys, wrong shapes and missing files fail loudly."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from timm.models.vision_transformer import Block

from norga.models import checkpoint_formats
from norga.models.checkpoint_formats import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointReadError,
    UntrustedCheckpointError,
    build_backbone,
    check_checkpoint_available,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "backbone"
SMALL = {"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
IMG = 32
LOGGER = "norga.models.checkpoint_formats"
Weights = dict[str, torch.Tensor]


def vit_weights(img_size: int = IMG, seed: int = 0) -> Weights:
    """A small ViT's tensors under timm's names (the names DINO, iBOT and MoCo v3 use), all random so a
    tensor left at its initial value would show."""
    torch.manual_seed(seed)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, img_size=img_size,
                              **SMALL)
    return {k: torch.randn_like(v) for k, v in model.state_dict().items()}


def prefixed(prefix: str, weights: Weights) -> Weights:
    return {prefix + k: v for k, v in weights.items()}


def ibot_head(prefix: str) -> Weights:
    """iBOTHead (shared head): mlp 0/2/4, weight-normed last_layer, and last_layer2 aliasing it."""
    head = {f"mlp.{i}.{p}": torch.randn(8, 8) for i in (0, 2, 4) for p in ("weight", "bias")}
    head |= {f"{layer}.weight_{p}": torch.randn(16, 8) for layer in ("last_layer", "last_layer2")
             for p in "gv"}
    return prefixed(prefix, head)


def mlp_bn(prefix: str, layers: int) -> Weights:
    """MoCo v3 `_build_mlp`: Linear(bias=False) + BatchNorm1d (+ReLU) per layer, the last BN non-affine."""
    out: Weights = {}
    for i in range(layers):
        out[f"{prefix}{3 * i}.weight"] = torch.randn(8, 8)
        bn = f"{prefix}{3 * i + 1}."
        if i < layers - 1:
            out |= {bn + "weight": torch.randn(8), bn + "bias": torch.randn(8)}
        out |= {bn + "running_mean": torch.randn(8), bn + "running_var": torch.rand(8),
                bn + "num_batches_tracked": torch.tensor(7)}
    return out


def ibot21k_file(w: Weights) -> dict:
    """main_ibot.py's save_dict: teacher = MultiCropWrapper(backbone, head); student is DDP-wrapped."""
    return {
        "student": prefixed("module.backbone.", vit_weights(seed=1)) | ibot_head("module.head.")
        | {"module.backbone.masked_embed": torch.zeros(1, 64)},
        "teacher": prefixed("backbone.", w) | ibot_head("head."),
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4)}},
                      "param_groups": [{"lr": 1e-3, "weight_decay": 0.04, "params": [0]}]},
        "epoch": 800,
        "args": argparse.Namespace(arch="vit_base", patch_size=16, global_crops_scale=(0.32, 1.0),
                                   pred_ratio=[0.0, 0.3], data_path="/imagenet22k"),
        "ibot_loss": {"center": torch.randn(1, 8), "center2": torch.randn(1, 1, 8)},
        "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                        "growth_interval": 2000, "_growth_tracker": 10},
    }


def mocov3_pretrain_file(w: Weights) -> dict:
    """main_moco.py's checkpoint of the DDP-wrapped MoCo model (vit-b-300ep.pth.tar)."""
    return {
        "epoch": 300, "arch": "vit_base",
        "state_dict": prefixed("module.base_encoder.", w) | mlp_bn("module.base_encoder.head.", 3)
        | prefixed("module.momentum_encoder.", vit_weights(seed=2))
        | mlp_bn("module.momentum_encoder.head.", 3) | mlp_bn("module.predictor.", 2),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4, "params": []}]},
    }


def mocov3_linear_file(w: Weights) -> dict:
    """main_lincls.py's checkpoint: the frozen encoder plus an ImageNet classifier, DDP-wrapped."""
    classifier = {"module.head.weight": torch.randn(1000, 64), "module.head.bias": torch.randn(1000)}
    return {"epoch": 90, "arch": "vit_base", "best_acc1": torch.tensor(76.7),
            "state_dict": prefixed("module.", w) | classifier, "optimizer": {"state": {}, "param_groups": []}}


# case -> (conf/backbone file, checkpoint layout built from the backbone's tensors, keys dropped by rule)
CASES: dict[str, tuple[str, Callable[[Weights], dict], int]] = {
    "ibot21k": ("ibot21k", ibot21k_file, 10),
    "ibot": ("ibot", lambda w: {"state_dict": dict(w)}, 0),
    # a released iBOT-1K teacher file that kept its projection head beside the backbone
    "ibot-with-head": ("ibot", lambda w: {"state_dict": dict(w) | ibot_head("head.")}, 10),
    "dino": ("dino", dict, 0),
    "mocov3-model": ("mocov3", lambda w: {"model": dict(w)}, 0),  # convert_to_deit.py output
    # two 3-layer projection heads (16 keys each), the 2-layer predictor (10), the momentum encoder
    "mocov3-pretrain": ("mocov3", mocov3_pretrain_file, 2 * 16 + 10 + len(vit_weights())),
    "mocov3-linear": ("mocov3", mocov3_linear_file, 2),
}
FILE_FORMATS = ["ibot21k", "ibot", "dino", "mocov3"]


def backbone_cfg(name: str, checkpoint_dir: Path, **overrides: object) -> DictConfig:
    """The real conf/backbone/<name>.yaml shrunk to the small ViT, interpolations resolved."""
    root = OmegaConf.create({"paths": {"checkpoint_dir": str(checkpoint_dir)},
                             "backbone": OmegaConf.load(CONF / f"{name}.yaml")})
    root.backbone.model_kwargs = dict(SMALL)
    root.backbone.img_size = IMG
    for key, value in overrides.items():
        OmegaConf.update(root, f"backbone.{key}", value, force_add=True)
    OmegaConf.resolve(root)
    return root.backbone


def write(cfg: DictConfig, checkpoint: dict) -> Path:
    path = Path(cfg.checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def assert_loaded(model: torch.nn.Module, w: Weights) -> None:
    state = model.state_dict()
    assert state.keys() == w.keys()
    for k, v in w.items():
        assert torch.equal(state[k], v), k


@pytest.mark.parametrize("case", CASES)
def test_each_format_loads_exactly(case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    name, layout, n_dropped = CASES[case]
    cfg = backbone_cfg(name, tmp_path)
    w = vit_weights()
    write(cfg, layout(w))
    caplog.set_level(logging.INFO, logger=LOGGER)
    check_checkpoint_available(cfg)
    model = build_backbone(cfg, block_fn=Block, num_classes=0)
    assert_loaded(model, w)
    assert f"dropped {n_dropped} keys by rule" in caplog.text
    assert "weights_only=False" not in caplog.text  # iBOT's argparse.Namespace needs no pickle fallback


def test_prefix_block_from_the_framework_loads(tmp_path: Path) -> None:
    from norga.models.peft import PeftBlock

    cfg = backbone_cfg("dino", tmp_path)
    w = vit_weights()
    write(cfg, w)
    assert_loaded(build_backbone(cfg, block_fn=PeftBlock, num_classes=0), w)


@pytest.mark.parametrize("case", CASES)
def test_renamed_key_names_key_and_file(case: str, tmp_path: Path) -> None:
    name, layout, _ = CASES[case]
    cfg = backbone_cfg(name, tmp_path)
    w = {("blocks.1.attn.qkv_w" if k == "blocks.1.attn.qkv.weight" else k): v
         for k, v in vit_weights().items()}
    path = write(cfg, layout(w))
    with pytest.raises(CheckpointMismatchError) as err:
        build_backbone(cfg, num_classes=0)
    message = str(err.value)
    assert str(path) in message
    assert "missing" in message and "blocks.1.attn.qkv.weight" in message
    assert "unexpected" in message and "blocks.1.attn.qkv_w" in message


@pytest.mark.parametrize("case", CASES)
def test_wrong_shape_names_expected_and_found(case: str, tmp_path: Path) -> None:
    name, layout, _ = CASES[case]
    cfg = backbone_cfg(name, tmp_path)
    w = vit_weights()
    w["blocks.0.mlp.fc1.weight"] = torch.randn(255, 64)
    path = write(cfg, layout(w))
    with pytest.raises(CheckpointMismatchError) as err:
        build_backbone(cfg, num_classes=0)
    message = str(err.value)
    assert str(path) in message and "blocks.0.mlp.fc1.weight" in message
    assert "expected (256, 64), found (255, 64)" in message


@pytest.mark.parametrize("name", FILE_FORMATS)
def test_missing_file_gives_path_and_source(name: str, tmp_path: Path) -> None:
    cfg = backbone_cfg(name, tmp_path / "nowhere")
    url = cfg.source.split()[0]
    assert url.startswith("https://")
    for call in (check_checkpoint_available, lambda c: build_backbone(c, num_classes=0)):
        with pytest.raises(CheckpointNotFoundError) as err:
            call(cfg)
        assert isinstance(err.value, FileNotFoundError)
        assert cfg.checkpoint in str(err.value) and url in str(err.value)
        assert err.value.path == cfg.checkpoint


@pytest.mark.parametrize("name", ["sup21k", *FILE_FORMATS])
def test_random_weights_touch_no_file(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pretrained=false must not read weights")

    monkeypatch.setattr(checkpoint_formats.reading, "read_checkpoint", forbidden)
    monkeypatch.setattr(timm.models, "load_pretrained", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    cfg = backbone_cfg(name, tmp_path / "nowhere", pretrained=False, checkpoint=str(tmp_path / "absent.pth"))
    check_checkpoint_available(cfg)
    model = build_backbone(cfg, block_fn=Block, num_classes=0)
    assert model.embed_dim == 64 and len(model.blocks) == 2 and model.num_classes == 0


UNPICKLED: list[str] = []


def _unpickle_marker(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class _PickledObject:
    """Stands for any arbitrary pickled object: unpickling it calls a function (here a harmless marker)."""

    def __reduce__(self) -> tuple:
        return _unpickle_marker, ("ran",)


def test_pickled_objects_are_refused_unread(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = backbone_cfg("ibot", tmp_path)
    path = write(cfg, {"state_dict": vit_weights(), "meta": _PickledObject()})
    UNPICKLED.clear()
    caplog.set_level(logging.INFO, logger=LOGGER)
    with pytest.raises(UntrustedCheckpointError) as err:
        build_backbone(cfg, num_classes=0)
    message = str(err.value)
    assert str(path) in message and "_unpickle_marker" in message  # the file and the object it needs
    assert "backbone.trust_checkpoint=true" in message  # the opt-in
    assert UNPICKLED == []  # refused without running anything from the file: no second, unsafe read
    assert "weights_only=False" not in caplog.text


def test_trust_checkpoint_opts_in_to_pickled_objects(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = backbone_cfg("ibot", tmp_path, trust_checkpoint=True)
    w = vit_weights()
    write(cfg, {"state_dict": w, "meta": _PickledObject()})
    UNPICKLED.clear()
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert_loaded(build_backbone(cfg, num_classes=0), w)
    assert UNPICKLED == ["ran"]
    assert "weights_only=False" in caplog.text and "trust_checkpoint" in caplog.text


def test_every_backbone_node_refuses_pickled_objects_by_default() -> None:
    for path in sorted(CONF.glob("*.yaml")):
        assert OmegaConf.load(path).trust_checkpoint is False, path.name
    from norga.config import BackboneConfig

    assert BackboneConfig.trust_checkpoint is False


def _zip_checkpoint(path: Path) -> bytes:
    torch.save({"state_dict": vit_weights()}, path)
    return path.read_bytes()


# a file that is no checkpoint: what a failed or interrupted download leaves behind
BAD_FILES: dict[str, Callable[[Path], bytes]] = {
    "empty": lambda p: b"",
    "text": lambda p: b"this is not a checkpoint\n" * 20,
    "html-error-page": lambda p: b"<!DOCTYPE html><html><body>403 Forbidden</body></html>\n",
    "truncated-zip": lambda p: _zip_checkpoint(p)[:2000],
    "truncated-legacy-pickle": lambda p: _legacy_checkpoint(p)[:300],
}


def _legacy_checkpoint(path: Path) -> bytes:
    torch.save({"state_dict": vit_weights()}, path, _use_new_zipfile_serialization=False)
    return path.read_bytes()


@pytest.mark.parametrize("bad", BAD_FILES)
@pytest.mark.parametrize("name", ["ibot", "sup21k"])
def test_unreadable_pth_names_the_file(bad: str, name: str, tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    content = BAD_FILES[bad](path)
    path.write_bytes(content)
    cfg = backbone_cfg(name, tmp_path, checkpoint=str(path))
    for trust in (False, True):  # the opt-in reads differently, and reports a bad file just the same
        OmegaConf.update(cfg, "trust_checkpoint", trust, force_add=True)
        with pytest.raises(CheckpointReadError) as err:
            build_backbone(cfg, num_classes=0)
        message = str(err.value)
        assert not isinstance(err.value, UntrustedCheckpointError)
        assert str(path) in message and "expected a torch.save file" in message
        assert ("the file is empty" in message) == (bad == "empty")
        if name == "ibot":
            assert cfg.source.split()[0] in message  # where to fetch it again


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_unreadable_safetensors_and_npz_name_the_file(suffix: str, tmp_path: Path) -> None:
    expected = {".safetensors": "expected a .safetensors file", ".npz": "expected a NumPy .npz archive"}[suffix]
    path = tmp_path / f"weights{suffix}"
    good = tmp_path / f"good{suffix}"
    if suffix == ".safetensors":
        save_file(vit_weights(), str(good))
    else:
        np.savez(good, **google_npz(vit_weights(), SMALL["num_heads"]))
    for content in (b"", b"<html>404</html>" * 4, good.read_bytes()[:1000]):
        path.write_bytes(content)
        for name in ("sup21k", "dino"):
            if suffix == ".npz" and name == "dino":
                continue  # StateDictFormat sends .npz files to TimmPretrained (tested elsewhere)
            cfg = backbone_cfg(name, tmp_path, checkpoint=str(path))
            with pytest.raises(CheckpointReadError, match=expected) as err:
                build_backbone(cfg, num_classes=0)
            assert str(path) in str(err.value)


def test_key_without_drop_rule_is_an_error(tmp_path: Path) -> None:
    cfg = backbone_cfg("dino", tmp_path)
    write(cfg, vit_weights() | {"head.weight": torch.randn(10, 64)})
    with pytest.raises(CheckpointMismatchError, match=r"unexpected(.|\n)*head\.weight"):
        build_backbone(cfg, num_classes=0)


def test_prefix_missing_everywhere_is_reported(tmp_path: Path) -> None:
    cfg = backbone_cfg("ibot21k", tmp_path)
    write(cfg, {"teacher": vit_weights()})  # the backbone. prefix is gone
    with pytest.raises(CheckpointMismatchError) as err:
        build_backbone(cfg, num_classes=0)
    message = str(err.value)
    assert "no prefix 'backbone.'" in message and "no model key was found" in message


def test_absent_nesting_key_lists_the_top_level(tmp_path: Path) -> None:
    cfg = backbone_cfg("mocov3", tmp_path)
    write(cfg, {"weights": vit_weights()})
    with pytest.raises(CheckpointMismatchError, match=r"\['model', 'state_dict'\].*\['weights'\]"):
        build_backbone(cfg, num_classes=0)


def test_pos_embed_from_another_resolution_is_resampled(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    cfg = backbone_cfg("dino", tmp_path, img_size=48)
    w = vit_weights(img_size=IMG)
    write(cfg, w)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = build_backbone(cfg, num_classes=0)
    assert "pos_embed (1, 17, 64) -> (1, 37, 64)" in caplog.text
    assert model.pos_embed.shape == (1, 37, 64)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, w["blocks.1.mlp.fc2.weight"])


# --- sup21k: timm's own pretrained machinery (arch vit_base_patch16_224.orig_in21k, shrunk) ---------------

@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_sup21k_local_file_loads_exactly(suffix: str, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    w = vit_weights()
    path = tmp_path / f"vit_in21k{suffix}"
    if suffix == ".safetensors":
        save_file(w, str(path))
        n_dropped = 0
    else:  # a converted in21k file still carrying its 21843-way classifier
        head = {"head.weight": torch.randn(21843, 64), "head.bias": torch.randn(21843)}
        torch.save({"state_dict": w | head}, path)
        n_dropped = 2
    cfg = backbone_cfg("sup21k", tmp_path, checkpoint=str(path))
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert_loaded(build_backbone(cfg, block_fn=Block, num_classes=0), w)
    assert f"dropped {n_dropped} keys by rule" in caplog.text


def test_sup21k_renamed_key_and_wrong_shape(tmp_path: Path) -> None:
    renamed = {("norm.w" if k == "norm.weight" else k): v for k, v in vit_weights().items()}
    save_file(renamed, str(tmp_path / "renamed.safetensors"))
    cfg = backbone_cfg("sup21k", tmp_path, checkpoint=str(tmp_path / "renamed.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"(?s)renamed\.safetensors.*missing.*norm\.weight.*"
                                                      r"unexpected.*norm\.w"):
        build_backbone(cfg, num_classes=0)

    wrong = vit_weights() | {"blocks.0.mlp.fc1.weight": torch.randn(255, 64)}
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    cfg = backbone_cfg("sup21k", tmp_path, checkpoint=str(tmp_path / "wrong.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"(?s)wrong\.safetensors.*blocks\.0\.mlp\.fc1\.weight"
                                                      r".*255"):
        build_backbone(cfg, num_classes=0)


def google_npz(w: Weights, heads: int) -> dict[str, np.ndarray]:
    """Google's original ViT-B_16.npz layout (what timm's _load_weights reads), with its 21k head and
    representation layer, which the model (num_classes=0) does not use."""
    dim = w["cls_token"].shape[-1]
    out = {"embedding/kernel": w["patch_embed.proj.weight"].permute(2, 3, 1, 0), "embedding/bias":
           w["patch_embed.proj.bias"], "cls": w["cls_token"],
           "Transformer/posembed_input/pos_embedding": w["pos_embed"],
           "Transformer/encoder_norm/scale": w["norm.weight"],
           "Transformer/encoder_norm/bias": w["norm.bias"],
           "pre_logits/kernel": torch.randn(dim, dim), "pre_logits/bias": torch.randn(dim),
           "head/kernel": torch.randn(dim, 21843), "head/bias": torch.randn(21843)}
    for i in range(SMALL["depth"]):
        b, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        mha = b + "MultiHeadDotProductAttention_1/"
        for j, n in enumerate(("query", "key", "value")):
            out[f"{mha}{n}/kernel"] = w[t + "attn.qkv.weight"].chunk(3)[j].T.reshape(dim, heads, -1)
            out[f"{mha}{n}/bias"] = w[t + "attn.qkv.bias"].chunk(3)[j].reshape(heads, -1)
        out[mha + "out/kernel"] = w[t + "attn.proj.weight"].reshape(dim, heads, -1).permute(1, 2, 0)
        out[mha + "out/bias"] = w[t + "attn.proj.bias"]
        for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[f"{b}{ln}/scale"], out[f"{b}{ln}/bias"] = w[t + norm + ".weight"], w[t + norm + ".bias"]
        for r in range(2):
            out[f"{b}MlpBlock_3/Dense_{r}/kernel"] = w[f"{t}mlp.fc{r + 1}.weight"].T
            out[f"{b}MlpBlock_3/Dense_{r}/bias"] = w[f"{t}mlp.fc{r + 1}.bias"]
    return {k: v.contiguous().numpy() for k, v in out.items()}


def test_sup21k_npz_goes_through_timms_jax_loader(tmp_path: Path) -> None:
    w = vit_weights()
    path = tmp_path / "ViT-B_16.npz"
    np.savez(path, **google_npz(w, SMALL["num_heads"]))
    cfg = backbone_cfg("sup21k", tmp_path, checkpoint=str(path))
    model = build_backbone(cfg, block_fn=Block, num_classes=0)
    assert_loaded(model, w)  # transposes and reshapes only: exact

    np.savez(path, **{k: v for k, v in google_npz(w, 2).items() if "encoderblock_1/LayerNorm_2" not in k})
    with pytest.raises(CheckpointMismatchError, match=r"ViT-B_16\.npz lacks .*encoderblock_1/LayerNorm_2"):
        build_backbone(cfg, num_classes=0)
    np.savez(path, cls=np.zeros((1, 1, 64), dtype=np.float32))  # not a ViT layout at all
    with pytest.raises(CheckpointMismatchError, match=r"ViT-B_16\.npz"):
        build_backbone(cfg, num_classes=0)


def test_sup21k_offline_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = backbone_cfg("sup21k", tmp_path, **{"format.cache_dir": str(tmp_path / "hf")})
    for call in (check_checkpoint_available, lambda c: build_backbone(c, num_classes=0)):
        with pytest.raises(CheckpointNotFoundError) as err:
            call(cfg)
        message = str(err.value)
        assert "backbone.checkpoint=" in message and "HF_HUB_OFFLINE" in message
        assert "vit_base_patch16_224.orig_in21k" in message


def test_sup21k_from_the_hub_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    repo = tmp_path / "hf" / "models--timm--vit_base_patch16_224.orig_in21k"
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)  # the hub cache layout: refs/main -> snapshots/<commit>
    w = vit_weights()
    save_file(w, str(repo / "snapshots" / ("0" * 40) / "model.safetensors"))
    cfg = backbone_cfg("sup21k", tmp_path, **{"format.cache_dir": str(tmp_path / "hf")})
    check_checkpoint_available(cfg)
    assert_loaded(build_backbone(cfg, block_fn=Block, num_classes=0), w)


def test_missing_local_sup21k_file(tmp_path: Path) -> None:
    cfg = backbone_cfg("sup21k", tmp_path, checkpoint=str(tmp_path / "ViT-B_16.npz"))
    with pytest.raises(CheckpointNotFoundError, match=r"ViT-B_16\.npz(.|\n)*storage\.googleapis\.com"):
        check_checkpoint_available(cfg)
