"""``backbone.reference_fc_norm``: the reference builds MoCo v3 with ``fc_norm=True``, so its trained final norm
is discarded, the features (statistics, contrastive term, TAP, key queries) are the raw last-block class token,
and a fresh LayerNorm before every head trains with it. Off (the default) the checkpoint's norm is used."""

import torch
from hydra import compose, initialize_config_dir
from torch import nn

from norga.config import register
from norga.models.vit import build_frozen_backbone, vit_features
from tests.learning import CONF, compose_cfg
from tests.test_backbones import SMALL, mocov3_pretrain_file, vit_weights


def mocov3(tmp_path, *overrides):
    path = tmp_path / "mocov3-vit-base-300ep.pth"
    weights = vit_weights()
    torch.save(mocov3_pretrain_file(weights), path)
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "backbone=mocov3", f"backbone.checkpoint={path}", "backbone.img_size=32",
            *[f"+backbone.model_kwargs.{k}={v}" for k, v in SMALL.items()], *overrides])
    return build_frozen_backbone(cfg.backbone), weights


def raw_class_token(vit, x):
    """The last block's class token, written out with the blocks of ``vit`` (no final norm)."""
    h = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    for block in vit.blocks:
        h = block(h)
    return h[:, 0]


def test_reference_switch_gives_the_raw_class_token_and_default_the_trained_norm(tmp_path):
    default, weights = mocov3(tmp_path)
    reference, _ = mocov3(tmp_path, "backbone.reference_fc_norm=true")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        raw = raw_class_token(default, x)
        trained_norm = nn.functional.layer_norm(raw, (raw.shape[-1],), weights["norm.weight"], weights["norm.bias"],
                                                eps=default.norm.eps)
        assert torch.allclose(vit_features(default, x), trained_norm, atol=1e-5)
        assert torch.allclose(vit_features(reference, x), raw, atol=1e-5)
    assert isinstance(reference.norm, nn.Identity)
    # the blocks are the checkpoint's in both
    assert torch.equal(reference.blocks[1].mlp.fc2.weight, weights["blocks.1.mlp.fc2.weight"])


def test_reference_switch_puts_a_fresh_trainable_norm_before_the_heads(tmp_path):
    from norga.engine.run import ContinualRun

    run = ContinualRun(compose_cfg(["backbone.reference_fc_norm=true", "train.epochs=1", "method.tii.epochs=1"]),
                       tmp_path)
    head = run.learner.head
    assert isinstance(head[0], nn.LayerNorm) and torch.all(head[0].weight == 1) and torch.all(head[0].bias == 0)
    run.run_task(0)
    assert not torch.all(head[0].weight == 1), "the LayerNorm before the head trains with it"
    plain = ContinualRun(compose_cfg(["train.epochs=1"]), tmp_path / "plain").learner
    assert isinstance(plain.head, nn.Linear)
