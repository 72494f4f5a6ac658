"""Every paper backbone runs end to end from a checkpoint file in its real layout (a small ViT of the same
family), on a CIFAR-100 written in the real on-disk format, with the paper row's preset shrunk by
debug=smoke; a missing checkpoint stops the run before any data is read."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import save_file

from norga.config import register
from norga.engine.run import ContinualRun
from norga.models.checkpoint_formats import CheckpointNotFoundError
from tests.fake_datasets import make_cifar100
from tests.test_backbones import SMALL, ibot21k_file, mocov3_pretrain_file, vit_weights

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {
    "sup21k": ("vit.safetensors", None),
    "ibot21k": ("checkpoint.pth", ibot21k_file),
    "ibot": ("ibot_vitbase16_pretrain.pth", lambda w: {"state_dict": dict(w)}),
    "dino": ("dino_vitbase16_pretrain.pth", dict),
    "mocov3": ("mocov3-vit-base-300ep.pth", mocov3_pretrain_file),
}
SMALL_VIT = [f"+backbone.model_kwargs.{k}={v}" for k, v in SMALL.items()]


def compose_cfg(overrides):
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_cifar100(root, n_per_class=2, n_test_per_class=1)
    return root


@pytest.mark.parametrize("backbone", list(LAYOUTS))
def test_backbone_runs_from_its_checkpoint_format(backbone, data_dir, tmp_path):
    name, layout = LAYOUTS[backbone]
    weights = vit_weights()
    path = tmp_path / name
    if layout is None:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    else:
        torch.save(layout(weights), path)
    cfg = compose_cfg([f"backbone={backbone}", f"backbone.checkpoint={path}", *SMALL_VIT, "backbone.img_size=32",
                       "dataset=cifar100", f"paths.data_dir={data_dir}", "debug=smoke",
                       "progress=false", "method.prompt_layers=[0,1]", "dataset.num_tasks=2"])
    run = ContinualRun(cfg, tmp_path / "run")
    loaded = run.learner.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items()), "the run uses the checkpoint's weights"
    metrics = run.run()
    assert metrics["finished"] and len(metrics["acc_matrix"]) == 2


def test_missing_checkpoint_stops_before_reading_data(tmp_path, monkeypatch):
    import norga.engine.run as engine

    monkeypatch.setattr(engine, "build_benchmark", lambda *a, **k: pytest.fail("data was read"))
    cfg = compose_cfg(["backbone=ibot21k", f"paths.checkpoint_dir={tmp_path}", "dataset=cifar100", "logger=none"])
    with pytest.raises(CheckpointNotFoundError, match=r"checkpoint\.pth.*github\.com/bytedance/ibot"):
        ContinualRun(cfg, tmp_path / "run")
