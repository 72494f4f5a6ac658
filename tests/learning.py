"""The learning fixture: end-to-end guarantees (resume, data parallel, evaluation) are checked on a model
that learns, so that "run A equals run B" means something.

It is the embedded default (digits, the tiny ViT pre-trained in the repository) shrunk to two tasks of five
classes, a quarter of each class for training, and a few epochs: about 90 % final accuracy (chance: 10 %)
and task identification well above chance on both tasks. The training sets have 225 and 226 images, so
with ``train.batch_size=32`` every epoch ends on a batch of 1 or 2 samples: smaller than the process
count of a 2- or 3-process run, which leaves some ranks an empty shard.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from norga.config import register

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")


def preset_row(stem: str) -> tuple[str, str, str]:
    """``(dataset, backbone, method)`` of ``conf/preset/<stem>.yaml``: names may hold underscores
    (``imagenet_a_augreg_in21k_coda``), so the stem is matched against the option files of each group."""
    options = {g: sorted((p.stem for p in (ROOT / "conf" / g).glob("*.yaml")), key=len, reverse=True)
               for g in ("dataset", "backbone", "method")}
    for method in options["method"]:
        if not stem.endswith("_" + method):
            continue
        rest = stem[: -len(method) - 1]
        for backbone in options["backbone"]:
            if rest.endswith("_" + backbone) and rest[: -len(backbone) - 1] in options["dataset"]:
                return rest[: -len(backbone) - 1], backbone, method
    raise ValueError(f"conf/preset/{stem}.yaml names no <dataset>_<backbone>_<method> of conf/")

# Overrides of the embedded default for every method (the logger is chosen by the caller: ``logger=none``
# unless it says), then each method's own (``method_overrides``).
LEARN = ["progress=false", "device=cpu", "dataset.num_tasks=2", "dataset.source.train_fraction=0.25",
         "train.batch_size=32", "train.epochs=2", "eval.max_samples_per_task=60"]
_HIDE = ["method.prompt_length=2", "method.prompt_layers=[0,1]", "method.tii.epochs=2", "method.tii.lr=0.01",
         "method.tii.scheduler.name=constant", "method.tii.tap.epochs=3", "method.tii.tap.lr=0.05",
         "method.tap.epochs=3", "method.tap.samples_per_class_factor=1"]
METHOD_LEARN = {
    "norga": _HIDE,
    "hide": _HIDE,
    "hide_lora": ["method.lora_layers=[0,1]", "method.tii.epochs=2", "method.tii.lr=0.01", "method.tii.tap.epochs=3",
                  "method.tii.tap.lr=0.05", "method.tap.epochs=3", "method.tap.samples_per_class_factor=1"],
    "l2p": ["method.prompt_length=2", "method.pool_size=6", "method.top_k=2"],
    "dualprompt": ["method.g_prompt_length=2", "method.prompt_length=2", "method.g_prompt_layers=[0]",
                   "method.prompt_layers=[1,2]"],
    "sprompt": ["method.prompt_length=2", "method.prompt_layers=[0,1]"],
    "coda": ["method.prompt_length=2", "method.prompt_layers=[0,1]"],
    "simplecil": ["train.max_stats_per_class=20"],
    # a small projection, and the first-session adapters on so that their training is covered too
    "ranpac": ["train.max_stats_per_class=20", "method.projection_dim=256", "method.first_session_adaptation=true",
               "method.adaptation.epochs=2", "method.adaptation.lr=0.05"],
    "sdlora": ["method.rank=4", "method.init_lr=0.02", "method.lr=0.02"],
    # small adapters; EASE trains one per task, APER one on task 0; no adapter dropout, which each torchrun
    # process would draw on its own, so that 2 processes equal 1 (RanPAC covers dropout on resume)
    "ease": ["train.max_stats_per_class=20", "method.bottleneck=8", "method.lr=0.05", "method.adapter_dropout=0.0"],
    "aper": ["train.max_stats_per_class=20", "method.bottleneck=8", "method.lr=0.05", "method.adapter_dropout=0.0"],
    # the authors' switches (per-block pulls, test-time drift: evaluated batch by batch); no adapter dropout, which
    # torchrun ranks would draw each on their own, so that 2 processes equal 1
    "mos": ["train.max_stats_per_class=20", "method.alignment.epochs=3", "method.adapter_dropout=0.0"],
    # the orthogonality term on, so that the snapshots it trains (the reference) are covered by resume; no
    # adapter dropout, which is drawn per process, so that 2 processes equal 1 (RanPAC covers dropout on resume)
    "tuna": ["train.max_stats_per_class=20", "method.alignment.epochs=2", "method.use_orth=true", "method.lr=0.05",
             "method.adapter_dropout=0.0"],
    # the embedded default's recipe (conf/preset/digits_tiny_inflora.yaml) on two LoRA'd blocks
    "inflora": ["method.lora_layers=[0,1]"],
}

# A correct resumed or data-parallel run meets these (measured: bitwise for resume; for 2 processes 3.3e-6
# NoRGa, 3.6e-7 L2P, 5.3e-6 DualPrompt, 2.1e-5 S-Prompt++ (lr 0.5), 6.4e-6 CODA-Prompt; 1.2e-6 NoRGa on 3);
# the breakages they must catch (a dropped optimiser state, a contrastive term on the local shard) move
# parameters by 1e-3 or more.
RESUME_ATOL = 1e-6
PROCESSES_ATOL = 1e-4


def with_logger(overrides: list[str]) -> list[str]:
    """``overrides`` with ``logger=none`` added unless they choose a logger."""
    overrides = list(overrides)
    return overrides if any(o.startswith("logger=") for o in overrides) else ["logger=none", *overrides]


def method_overrides(overrides: list[str]) -> list[str]:
    """The fixture's overrides for the method ``overrides`` choose (``method=<name>``; norga by default)."""
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("method=")]
    return METHOD_LEARN.get(chosen[-1] if chosen else "norga", [])


def fixture_overrides(overrides: list[str] = ()) -> list[str]:
    """Every override of the fixture plus ``overrides`` (for ``run.py`` on the command line)."""
    overrides = list(overrides)
    methods = [o for o in overrides if o.startswith("method=")]
    rest = [o for o in overrides if not o.startswith("method=")]
    return with_logger(methods + LEARN + method_overrides(overrides) + rest)


def compose_cfg(overrides: list[str] = ()) -> DictConfig:
    """The fixture's config plus ``overrides``, composed as ``run.py`` composes it."""
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=fixture_overrides(overrides))


def _flatten(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
    elif torch.is_tensor(obj) and obj.is_floating_point():
        out[prefix[:-1]] = obj
    return out


def learned_state(run_dir: Path, task: int) -> dict[str, torch.Tensor]:
    """Every floating-point tensor of the learner's state in ``checkpoints/task_<task>.pt``."""
    state = torch.load(Path(run_dir) / "checkpoints" / f"task_{task}.pt", map_location="cpu", weights_only=True)
    return _flatten(state["learner"])


def learned_state_difference(a: Path, b: Path, task: int) -> tuple[float, str]:
    """The largest absolute difference between two runs' learned tensors after ``task``, and where."""
    x, y = learned_state(a, task), learned_state(b, task)
    assert x.keys() == y.keys(), sorted(set(x) ^ set(y))
    assert x, "the checkpoint holds no learned tensors"
    return max(((x[k] - y[k]).abs().max().item(), k) for k in x)


def assert_same_learned_state(a: Path, b: Path, tasks: int, atol: float) -> None:
    for task in range(tasks):
        worst, where = learned_state_difference(a, b, task)
        assert worst <= atol, f"after task {task}, {where} differs by {worst:.3g} (> {atol})"


def assert_learns(metrics: dict) -> None:
    """The fixture is meaningful: accuracy far above chance, and task identification picks each task for
    most of its own samples (so it picks different tasks for different samples)."""
    assert metrics["final_avg_acc"] > 60, metrics["acc_matrix"]
    last = metrics["tii_acc_matrix"][-1]
    if None not in last:  # learners that identify tasks
        assert min(last) > 50, metrics["tii_acc_matrix"]
