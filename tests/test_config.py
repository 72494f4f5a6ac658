"""Config composition: every paper row resolves to the values of docs/algorithm.md#presets; command-line choices
win over presets; typos fail early with the valid options."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from norga.config import register

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")

# docs/algorithm.md#presets: dataset, backbone -> epochs, lr, sched, length, reg, momentum, ca_lr, crct, larger, gate
WTP = """cifar100 sup21k 50 0.03 step 5 0.1 0.01 0.05 80 yes sigmoid
cifar100 ibot21k 20 0.03 step 5 0.1 0.1 0.005 80 yes tanh
cifar100 ibot 20 0.03 step 5 0.1 0.1 0.005 80 yes tanh
cifar100 dino 20 0.03 step 5 0.1 0.1 0.005 80 yes tanh
cifar100 mocov3 20 0.03 step 5 0.1 0.1 0.005 80 yes gelu
imr sup21k 150 0.03 cosine 20 0.5 0.01 0.005 30 yes sigmoid
imr ibot21k 50 0.03 constant 20 0.5 0.01 0.005 30 yes tanh
imr ibot 50 0.03 constant 20 0.5 0.01 0.005 80 yes sigmoid
imr dino 50 0.03 constant 20 0.5 0.01 0.005 30 yes tanh
imr mocov3 50 0.03 constant 20 0.5 0.01 0.005 30 yes gelu
cub sup21k 50 0.03 step 20 0.01 0.01 0.05 80 no sigmoid
cub ibot21k 50 0.03 step 20 0.01 0.01 0.05 80 no tanh
five_datasets sup21k 20 0.03 constant 40 0.1 0.01 0.005 30 yes tanh
five_datasets ibot21k 20 0.03 constant 40 0.1 0.01 0.005 30 yes sigmoid"""
# TII stage of NoRGa: lr / ca_lr / schedule. HiDe-Prompt's TII stage has the same lr and schedule but ca_lr
# 0.005 on every row (its scripts pass --ca_lr 0.005 to the TII command too).
TII = {("cifar100", "sup21k"): (0.0005, 0.005, "constant"), ("cub", "sup21k"): (0.01, 0.05, "constant"),
       ("cub", "ibot21k"): (0.0005, 0.05, "step")}
for b in ("ibot21k", "ibot", "dino", "mocov3"):
    TII[("cifar100", b)] = (0.0005, 0.05, "step")
for b in ("sup21k", "ibot21k", "ibot", "dino", "mocov3"):
    TII[("imr", b)] = (0.0005, 0.005, "step")
for b in ("sup21k", "ibot21k"):
    TII[("five_datasets", b)] = (0.001, 0.005, "constant")

ROWS = [line.split() for line in WTP.splitlines()]


def compose_cfg(overrides):
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("method", ["norga", "hide"])
@pytest.mark.parametrize("row", ROWS, ids=[f"{r[0]}-{r[1]}" for r in ROWS])
def test_paper_rows_compose_to_their_values(row, method):
    d, b, ep, lr, sched, length, reg, mom, ca_lr, crct, larger, gate = row
    cfg = compose_cfg([f"dataset={d}", f"backbone={b}", f"method={method}"])
    assert cfg.train.epochs == int(ep) and cfg.train.batch_size == 128
    assert cfg.optimizer.lr == float(lr) and cfg.scheduler.name == sched
    assert cfg.optimizer.larger_prompt_lr == (larger == "yes")
    assert cfg.method.prompt_length == int(length) and cfg.method.reg == float(reg)
    assert cfg.method.prompt_momentum == float(mom) and cfg.method.prompt_layers == [0, 1, 2, 3, 4]
    assert cfg.method.statistics == "covariance"
    if method == "norga":
        assert cfg.method.gate == gate
        assert (cfg.method.tap.lr, cfg.method.tap.epochs) == (float(ca_lr), int(crct))
    else:
        assert cfg.method.gate is None and cfg.method._target_.endswith("HiDePrompt")
        assert (cfg.method.tap.lr, cfg.method.tap.epochs) == (0.005, 30)
    assert cfg.method.tap.samples_per_class_factor == 5
    tii_lr, tii_ca, tii_sched = TII[(d, b)]
    tii = cfg.method.tii
    assert (tii.epochs, tii.lr, tii.tap.epochs, tii.scheduler.name) == (20, tii_lr, 30, tii_sched)
    assert tii.tap.lr == (tii_ca if method == "norga" else 0.005)
    five = d == "five_datasets"
    assert tii.mlp_structure == ([4, 4] if five else [2])
    # 5-Datasets clips the prompts' gradients at 2; the TII stage keeps 1.0, as in the reference
    assert cfg.train.clip_grad == (2.0 if five else 1.0) and tii.clip_grad == 1.0
    assert cfg.method.batchwise_prompt == five
    assert cfg.eval.batch_size == 128
    assert cfg.method.prefix_layout == "per_sample"


def test_command_line_choices_win_over_presets():
    cfg = compose_cfg(["dataset=imr", "backbone=sup21k", "gate=gelu", "scheduler=step", "optimizer.lr=0.01",
                       "train.epochs=5", "seed=40"])
    assert cfg.method.gate == "gelu" and cfg.scheduler.name == "step" and cfg.optimizer.lr == 0.01
    assert cfg.train.epochs == 5 and cfg.seed == 40
    assert compose_cfg(["dataset=imr", "backbone=sup21k", "method.gate=relu"]).method.gate == "relu"


def test_default_is_the_embedded_digits_run():
    cfg = compose_cfg([])
    assert (cfg.dataset.name, cfg.backbone.name, cfg.method.name, cfg.method.gate) == ("digits", "tiny", "norga",
                                                                                       "tanh")
    assert cfg.logger.mode == "offline"


def test_misspelt_key_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException):
        compose_cfg(["method.gates=tanh"])
    with pytest.raises(ConfigCompositionException):
        compose_cfg(["train.epoch=3"])


def test_unknown_group_option_lists_valid_options():
    with pytest.raises(ConfigCompositionException, match="Available options"):
        compose_cfg(["gate=swish"])


def test_debug_smoke_shrinks_every_stage():
    cfg = compose_cfg(["dataset=cub", "debug=smoke"])
    assert (cfg.train.epochs, cfg.train.max_epochs) == (1, 1)  # max_epochs caps every stage of every method
    assert cfg.train.max_batches and cfg.eval.max_samples_per_task
    assert cfg.logger._target_.endswith("NullLogger")


def test_print_config_from_the_command_line():
    out = subprocess.run([sys.executable, "run.py", "--cfg", "job", "dataset=cifar100", "backbone=sup21k"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    cfg = OmegaConf.create(out)
    assert cfg.train.epochs == 50 and cfg.method.gate == "sigmoid"


def test_dataset_root_reaches_the_loader():
    cfg = compose_cfg(["dataset=cub", "dataset.root=/data/cub"])
    assert cfg.dataset.source.root == "/data/cub"
    assert compose_cfg(["dataset=imr", "paths.data_dir=/d"]).dataset.source.root == "/d"


# docs/algorithm.md#baseline-hyperparameters: method -> dataset -> (epochs, schedule, prompt length, pool, top_k,
# pull coefficient, batchwise at test, G-prompt length); epochs as the reference's scripts pass them
# (5-Datasets with Sup-21K: 40)
BASELINE = {
    "l2p": {"cifar100": (10, "constant", 5, 30, 5, 0.1, True, None), "imr": (50, "constant", 5, 30, 5, 0.1, True, None),
            "cub": (50, "step", 5, 30, 5, 0.1, True, None),
            "five_datasets": (20, "constant", 10, 20, 4, 0.5, True, None)},
    "dualprompt": {"cifar100": (20, "constant", 20, None, 1, 1.0, False, 5),
                   "imr": (50, "constant", 20, None, 1, 1.0, False, 5),
                   "cub": (50, "step", 20, None, 1, 1.0, False, 5),
                   "five_datasets": (20, "constant", 40, None, 1, 0.5, True, 10)},
    "sprompt": {"cifar100": (20, "constant", 20, None, 1, 1.0, True, None),
                "imr": (50, "constant", 20, None, 1, 1.0, False, None),
                "cub": (50, "step", 20, None, 1, 1.0, False, None),
                "five_datasets": (20, "constant", 40, None, 1, 0.5, True, None)},
}
BASELINE_ROWS = [(d, b) for d in ("cifar100", "imr") for b in ("sup21k", "ibot21k", "ibot", "dino", "mocov3")] + [
    (d, b) for d in ("cub", "five_datasets") for b in ("sup21k", "ibot21k")]


@pytest.mark.parametrize("method", list(BASELINE))
@pytest.mark.parametrize(("d", "b"), BASELINE_ROWS, ids=[f"{d}-{b}" for d, b in BASELINE_ROWS])
def test_baseline_rows_compose_to_the_reference_scripts_values(method, d, b):
    epochs, sched, length, pool, top_k, pull, batchwise, g_length = BASELINE[method][d]
    if d == "five_datasets" and b == "sup21k":
        epochs = 40
    cfg = compose_cfg([f"dataset={d}", f"backbone={b}", f"method={method}"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.clip_grad) == (epochs, 128, 1.0)
    assert (cfg.optimizer.lr, cfg.optimizer.larger_prompt_lr, cfg.scheduler.name) == (0.005, False, sched)
    assert not cfg.scheduler.first_task_only, "the reference's D3 is a switch, off in presets"
    m = cfg.method
    assert (m.prompt_length, m.pool_size, m.top_k, m.pull_coeff, m.batchwise_prompt) == (
        length, pool, top_k, pull, batchwise)
    if method == "l2p":
        assert m.prompt_layers == [0] and m.train_batchwise and not m.prompt_mask
    else:
        assert m.prompt_mask and m.shared_prompt_pool and m.prefix_layout == "per_sample"
        assert m.prompt_layers == ([2, 3, 4] if method == "dualprompt" else [0, 1, 2, 3, 4])
        assert m.g_prompt_layers == ([0, 1] if method == "dualprompt" else [])
        if g_length is not None:
            assert m.g_prompt_length == g_length
