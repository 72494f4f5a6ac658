"""Structured config schemas: Hydra checks every composed config against these, so a misspelt key in a
YAML file or on the command line fails at compose time with the valid keys listed.

The groups' YAML files (``conf/``) fill these nodes; presets (``conf/preset``) only set values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from norga.methods.schemas import METHOD_SCHEMAS, ScheduleConfig, choice


@dataclass
class PathsConfig:
    data_dir: str = "data"
    cache_dir: str = ".cache/norga"
    checkpoint_dir: str = "checkpoints"


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = "data"  # the folder that holds the dataset (default paths.data_dir)
    num_tasks: int = MISSING
    shuffle: bool = True
    source: Any = MISSING  # {_target_: loader function, root, download, ...}


@dataclass
class BackboneConfig:
    name: str = MISSING
    arch: str = MISSING
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    img_size: int = 224
    pretrained: bool = True
    checkpoint: str | None = None
    format: Any = None  # {_target_: norga.models.checkpoint_formats.<Format>, ...}
    # Read a checkpoint that needs pickled objects besides tensors (torch.load weights_only=False): this runs
    # code stored in the file, so only for files from a trusted source.
    trust_checkpoint: bool = False
    # Reproduce the reference's MoCo v3 build (fc_norm=True): the trained final norm is discarded, features are
    # the raw last-block class token, and every head gets a fresh trainable LayerNorm in front
    # (docs/algorithm.md#moco-v3-final-norm-backbonereference_fc_norm). Off: the checkpoint's norm is used.
    reference_fc_norm: bool = False
    source: str = ""
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


@dataclass
class OptimizerConfig:
    lr: float = 0.03
    larger_prompt_lr: bool = False
    partial: Any = field(default_factory=lambda: {"_target_": "torch.optim.Adam", "_partial_": True})


@dataclass
class SchedulerConfig(ScheduleConfig):
    """The per-epoch lr schedule of the main training stage. A name, not a _target_: presets switch schedules
    by value, and every schedule is a per-epoch factor."""

    name: str = choice("constant", "constant", "step", "cosine")
    # the reference's defect D3: the schedule runs in task 0 only, later tasks train at the base lr
    # (docs/algorithm.md#d3-step-schedule-on-later-tasks-schedulerfirst_task_only)
    first_task_only: bool = False


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 128  # global batch: the lr scaling (batch / 256) uses it
    clip_grad: float | None = 1.0
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | tf32 | bf16
    num_workers: int = 0
    max_batches: int | None = None  # per training epoch; for smoke tests
    max_epochs: int | None = None  # caps the epochs of every stage of every method; for smoke tests
    max_stats_per_class: int | None = None  # images per class for class statistics; for smoke tests
    # prefix attention kernel: auto (per device) | explicit | sdpa_mask | lse_merge | augmented | flex;
    # every choice is checked against the explicit formula on the device before the run starts
    attention: str = "auto"
    # torch.compile of the ViT forward (training and evaluation). Off by default: on CPU it does not pay
    # (about 1.0x at ViT-B size, 30+ s to compile); it has not been measured on a GPU yet.
    compile: bool = False


@dataclass
class EvalConfig:
    batch_size: int = 128
    cache: bool = True  # reuse frozen backbone / finished-prompt features across evaluations
    max_samples_per_task: int | None = None  # for smoke tests


@dataclass
class RunConfig:
    seed: int = 42
    device: str = "auto"
    resume: bool = False
    progress: bool = True
    paths: PathsConfig = field(default_factory=PathsConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # each method's own schema (norga.methods.schemas), chosen by conf/method/<name>.yaml
    method: Any = MISSING
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: Any = field(default_factory=lambda: {"_target_": "norga.engine.logging.NullLogger"})
    # None for a continual run; "joint" (set by `+bound=joint`, conf/bound/joint.yaml) for the upper bound
    # trained on all classes as one task, which the report labels and compares the continual rows with
    bound: str | None = None


# Keys that do not change a run's results: a resumed run may differ from its checkpoint in these, and the
# report does not split rows by them.
RESULT_FREE_KEYS = ("resume", "progress", "device", "logger", "paths", "train.num_workers", "eval.cache")


def asset_path(name: str) -> str:
    """Path of a file shipped in ``norga/assets`` (the ``${pkg_asset:<file>}`` resolver)."""
    return str(resources.files("norga") / "assets" / name)


def register() -> None:
    """Register the schema and resolvers with Hydra/OmegaConf (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=RunConfig)
    for name, schema in METHOD_SCHEMAS.items():
        store.store(group="schema/method", name=name, node=schema)
    if not OmegaConf.has_resolver("pkg_asset"):
        OmegaConf.register_new_resolver("pkg_asset", asset_path)
