"""The AugReg backbones the LAMDA family and SD-LoRA use are their own tags, never confused with today's
``sup21k`` (Google's original ImageNet-21k weights): each names timm's tagged model, loads as strictly as
``sup21k`` from a local file (no download in tests), and names the run's folder and label."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from timm.models.vision_transformer import Block

from norga.models.checkpoint_formats import CheckpointMismatchError, build_backbone
from tests.test_backbones import CONF, LOGGER, assert_loaded, backbone_cfg, vit_weights

TAGS = {
    "sup21k": "vit_base_patch16_224.orig_in21k",
    "augreg_in21k": "vit_base_patch16_224.augreg_in21k",
    "augreg_in21k_ft_in1k": "vit_base_patch16_224.augreg_in21k_ft_in1k",
    "augreg2_in21k_ft_in1k": "vit_base_patch16_224.augreg2_in21k_ft_in1k",
}


def test_each_tag_pins_its_own_timm_weights():
    """The untagged vit_base_patch16_224 means other weights in timm 0.6 and 1.x: every file pins a tag."""
    archs = {name: OmegaConf.load(CONF / f"{name}.yaml").arch for name in TAGS}
    assert archs == TAGS
    assert all(OmegaConf.load(CONF / f"{name}.yaml").name == name for name in TAGS)


@pytest.mark.parametrize("name", [n for n in TAGS if n != "sup21k"])
def test_augreg_tags_load_a_local_file_strictly(name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    w = vit_weights()
    classes = 21843 if name == "augreg_in21k" else 1000
    path = tmp_path / "vit.pth"
    torch.save({"state_dict": w | {"head.weight": torch.randn(classes, 64), "head.bias": torch.randn(classes)}},
               path)
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert_loaded(build_backbone(backbone_cfg(name, tmp_path, checkpoint=str(path)), block_fn=Block,
                                 num_classes=0), w)
    assert f"loaded {len(w)} tensors" in caplog.text  # the classifier is left out (timm's cfg names it)

    renamed = {("norm.w" if k == "norm.weight" else k): v for k, v in w.items()}
    save_file(renamed, str(tmp_path / "renamed.safetensors"))
    cfg = backbone_cfg(name, tmp_path, checkpoint=str(tmp_path / "renamed.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"(?s)missing.*norm\.weight.*unexpected.*norm\.w"):
        build_backbone(cfg, num_classes=0)
