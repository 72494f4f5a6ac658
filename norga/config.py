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
    source: str = ""
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


@dataclass
class MethodConfig:
    _target_: str = "norga.methods.norga.NoRGa"
    name: str = "norga"
    gate: str | None = "tanh"
    prompt_length: int = 5
    prompt_layers: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    prompt_momentum: float = 0.0
    reg: float = 0.1
    contrastive_temperature: float = 0.8
    # per_sample: correct prefix tuning. reference: the reference code's batch-mixing layout (ALGORITHM.md).
    prefix_layout: str = "per_sample"
    statistics: str = "covariance"
    n_centroids: int = 10
    # 5-Datasets presets: the whole evaluation batch uses its most frequent predicted task (leaks batch
    # composition; faithful to the published 5-Datasets numbers).
    batchwise_prompt: bool = False


@dataclass
class OptimizerConfig:
    lr: float = 0.03
    larger_prompt_lr: bool = False
    partial: Any = field(default_factory=lambda: {"_target_": "torch.optim.Adam", "_partial_": True})


@dataclass
class SchedulerConfig:
    # A name, not a _target_: presets switch schedules by value, and every schedule is a per-epoch factor.
    name: str = "constant"
    step_epochs: int = 30
    gamma: float = 0.1
    min_lr: float = 1e-5


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 128  # global batch: the lr scaling (batch / 256) uses it
    clip_grad: float | None = 1.0
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | tf32 | bf16
    num_workers: int = 0
    max_batches: int | None = None  # per training epoch; for smoke tests
    max_stats_per_class: int | None = None  # images per class for class statistics; for smoke tests
    # prefix attention kernel: auto (per device) | explicit | sdpa_mask | lse_merge | augmented | flex;
    # every choice is checked against the explicit formula on the device before the run starts
    attention: str = "auto"
    # torch.compile of the ViT forward (training and evaluation). Off by default: on CPU it does not pay
    # (about 1.0x at ViT-B size, 30+ s to compile); it has not been measured on a GPU yet.
    compile: bool = False


@dataclass
class TAPConfig:
    epochs: int = 30
    lr: float = 0.005
    samples_per_class_factor: int = 5
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass
class TIITAPConfig:
    epochs: int = 30
    lr: float = 0.005  # scaled by batch / 256
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass
class TIIConfig:
    epochs: int = 20
    lr: float = 0.0005
    mlp_structure: list[int] = field(default_factory=lambda: [2])
    scheduler: SchedulerConfig = field(default_factory=lambda: SchedulerConfig(name="step"))
    tap: TIITAPConfig = field(default_factory=TIITAPConfig)
    # Train the MLP on backbone features computed once per task (no augmentation). Off in the paper presets:
    # their augmentation changes the features every epoch, so this changes results (and is far faster).
    feature_cache: bool = False


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
    method: MethodConfig = field(default_factory=MethodConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tap: TAPConfig = field(default_factory=TAPConfig)
    tii: TIIConfig = field(default_factory=TIIConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: Any = field(default_factory=lambda: {"_target_": "norga.engine.logging.NullLogger"})


# Keys that do not change a run's results: a resumed run may differ from its checkpoint in these, and the
# report does not split rows by them.
RESULT_FREE_KEYS = ("resume", "progress", "device", "logger", "paths", "train.num_workers", "eval.cache")


def asset_path(name: str) -> str:
    """Path of a file shipped in ``norga/assets`` (the ``${pkg_asset:<file>}`` resolver)."""
    return str(resources.files("norga") / "assets" / name)


def register() -> None:
    """Register the schema and resolvers with Hydra/OmegaConf (idempotent)."""
    ConfigStore.instance().store(name="config_schema", node=RunConfig)
    if not OmegaConf.has_resolver("pkg_asset"):
        OmegaConf.register_new_resolver("pkg_asset", asset_path)
