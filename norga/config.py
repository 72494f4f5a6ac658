"""Structured config schemas: Hydra checks every composed config against these, so a misspelt key in a
YAML file or on the command line fails at compose time with the valid keys listed.

The groups' YAML files (``conf/``) fill these nodes; presets (``conf/preset``) only set values. Field
metadata (``min``, ``min_exclusive``, ``max``, ``max_exclusive``, ``choices``, ``pattern``, ``min_items``; see
:mod:`norga.methods.schemas`) states what a value may be; :func:`validate` checks a composed config against
it, and against keys added with ``+key=`` that no schema knows, before anything is built.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import Field, dataclass, field, fields, is_dataclass
from importlib import resources
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from norga.errors import ConfigError
from norga.fidelity import CORRECTED, FIDELITIES
from norga.help import explain_missing_option
from norga.methods.schemas import METHOD_SCHEMAS, ScheduleConfig, at_least, choice, positive

# The prefix-attention kernels (norga.models.attention.PREFIX_IMPLS, which imports torch: composing a config
# must not) and the precisions of train.precision.
ATTENTION_KERNELS = ("auto", "explicit", "sdpa_mask", "lse_merge", "augmented", "flex")
PRECISIONS = ("auto", "fp32", "tf32", "bf16")


def matching(regex: str, default: Any, means: str) -> Any:
    """A string field that must match ``regex`` in full; ``means`` says which values that is, for messages."""
    return field(default=default, metadata={"pattern": regex, "means": means})


@dataclass
class PathsConfig:
    data_dir: str = "data"
    cache_dir: str = ".cache/norga"
    checkpoint_dir: str = "checkpoints"


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = "data"  # the folder that holds the dataset (default paths.data_dir)
    num_tasks: int = positive(MISSING)
    shuffle: bool = True
    source: Any = MISSING  # {_target_: loader function, root, download, ...}
    # how `shuffle` orders the classes: seeded (random.Random(seed), the prompt methods' reference) or numpy_1993
    # (numpy's RandomState(1993) permutation whatever the seed, the PILOT family's: SimpleCIL, RanPAC); numpy_<seed>
    # is that permutation from another fixed seed (SD-LoRA's ImageNet-R: numpy_1995)
    class_order: str = matching(r"seeded|numpy_\d+", "seeded", "seeded or numpy_<seed> (e.g. numpy_1993)")
    # transform families replaced by another, e.g. {cifar100: default}: CIFAR images get the ImageNet-R family
    # (crop scale 0.05-1, bilinear, no colour jitter, no normalisation), as SimpleCIL's and RanPAC's authors
    transform_as: dict[str, str] = field(default_factory=dict)
    # The protocol's other choices (conf/protocol, norga.data.protocol); each can be overridden on its own.
    init_classes: int | None = at_least(0, None)  # B{init}Inc{inc}; null with increment null: equal tasks
    increment: int | None = positive(None)
    normalize: str = choice("recipe", "recipe", "none", "backbone")
    verify: bool = False  # check the archive's MD5 where the user keeps it next to the folder
    accept_license: bool = False  # for datasets whose licence restricts training on them (ObjectNet)


@dataclass
class BackboneConfig:
    name: str = MISSING
    arch: str = MISSING
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    img_size: int = positive(224)
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
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5], metadata={"min_items": 1})
    # images are divided by it
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5], metadata={"min_items": 1, "min_exclusive": 0})


@dataclass
class OptimizerConfig:
    lr: float = positive(0.03)  # a negative lr trains by gradient ascent
    larger_prompt_lr: bool = False
    partial: Any = field(default_factory=lambda: {"_target_": "torch.optim.Adam", "_partial_": True})


@dataclass
class SchedulerConfig(ScheduleConfig):
    """The per-epoch lr schedule of the main training stage. A name, not a _target_: presets switch schedules
    by value, and every schedule is a per-epoch factor."""

    name: str = choice("constant", "constant", "step", "multistep", "cosine", "coda_cosine")
    # the reference's defect D3: the schedule runs in task 0 only, later tasks train at the base lr
    # (docs/algorithm.md#d3-step-schedule-on-later-tasks-schedulerfirst_task_only)
    first_task_only: bool = False


@dataclass
class TrainConfig:
    epochs: int = positive(5)
    batch_size: int = positive(128)  # global batch: the lr scaling (batch / 256) uses it
    clip_grad: float | None = positive(1.0)  # null: no clipping
    precision: str = choice("auto", *PRECISIONS)  # auto: bf16 on CUDA, fp32 on CPU
    num_workers: int = at_least(0, 0)
    max_batches: int | None = positive(None)  # per training epoch; for smoke tests
    max_epochs: int | None = positive(None)  # caps the epochs of every stage of every method; for smoke tests
    max_stats_per_class: int | None = positive(None)  # images per class for class statistics; for smoke tests
    # prefix attention kernel (auto: per device); every choice is checked against the explicit formula on the
    # device before the run starts
    attention: str = choice("auto", *ATTENTION_KERNELS)
    # intra-op threads of this process; null: its share of the CPU cores (the cores divided by the jobs a
    # launcher runs side by side and by the processes of a torchrun), norga.engine.threads
    threads: int | None = positive(None)
    # torch.compile of the ViT forward (training and evaluation). Off by default: on CPU it does not pay
    # (about 1.0x at ViT-B size, 30+ s to compile); it has not been measured on a GPU yet.
    compile: bool = False


@dataclass
class EvalConfig:
    batch_size: int = positive(128)
    cache: bool = True  # reuse frozen backbone / finished-prompt features across evaluations
    max_samples_per_task: int | None = positive(None)  # for smoke tests


@dataclass
class RunConfig:
    seed: int = at_least(0, 42)  # NumPy's seeding takes no negative numbers
    # conf/protocol: the named set of dataset.* choices the run started from (a name a user's own protocol
    # file may choose)
    protocol: str = matching(r"[A-Za-z0-9_.-]+", "hide", "a protocol name (conf/protocol/<name>.yaml)")
    device: str = matching(r"auto|cpu|mps|cuda(:\d+)?", "auto", "auto, cpu, mps, cuda or cuda:<index>")
    resume: bool = False
    # progress bars: auto (only when stderr is a terminal), true or false; without bars, one line per epoch
    progress: Any = field(default="auto", metadata={"choices": ("auto", True, False)})
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
    bound: str | None = choice(None, "joint")
    # corrected: norga's defaults; reference: every documented reference behaviour of the method, set by
    # conf/fidelity (docs/algorithm.md#fidelity)
    fidelity: str = choice(CORRECTED, *FIDELITIES)


def asset_path(name: str) -> str:
    """Path of a file shipped in ``norga/assets`` (the ``${pkg_asset:<file>}`` resolver)."""
    return str(resources.files("norga") / "assets" / name)


_DIRNAME_LIMIT = 200  # characters; a folder name may have 255 bytes, and the job number comes before it


def safe_dirname(text: str) -> str:
    """Hydra's ``override_dirname`` as one folder name (the ``${safe_dirname:...}`` resolver): a path-valued
    override keeps the last part of its path (``backbone.checkpoint=/w/vit.pth`` -> ``backbone.checkpoint=
    vit.pth``), so no job folder is a tree of directories; an over-long name is cut and ends in a hash of the
    whole, so it stays unique."""
    text = re.sub(r"[\\/]+(?=,|\]|$)", "", str(text))  # trailing separators of a value
    text = re.sub(r"(?:[^,=\[\]\\/]*[\\/])+", "", text)  # the directories of each value
    if len(text.encode()) > _DIRNAME_LIMIT:
        digest = hashlib.sha1(text.encode()).hexdigest()[:10]
        text = text.encode()[: _DIRNAME_LIMIT - 11].decode(errors="ignore") + "-" + digest
    return text


def register() -> None:
    """Register the schema and resolvers with Hydra/OmegaConf (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=RunConfig)
    for name, schema in METHOD_SCHEMAS.items():
        store.store(group="schema/method", name=name, node=schema)
    if not OmegaConf.has_resolver("pkg_asset"):
        OmegaConf.register_new_resolver("pkg_asset", asset_path)
    if not OmegaConf.has_resolver("safe_dirname"):
        OmegaConf.register_new_resolver("safe_dirname", safe_dirname)


# ---- validation ---------------------------------------------------------------------------------------------
_FIX = ("Fix it on the command line (key=value) or in the config file that sets it (python run.py --info "
        "defaults-tree lists the files; python run.py --cfg job prints the composed config). Nothing was built "
        "or written.")


def validate(cfg: DictConfig, overrides: Iterable[str] = ()) -> None:
    """Raise :class:`ConfigError` naming every value of ``cfg`` that its schema's field metadata rules out and
    every key no schema declares (added with ``+key=``); ``overrides`` (the command line) say which problems
    came from it. Cheap and import-light: run it before anything is built."""
    problems = list(config_problems(cfg))
    if problems:
        raise ConfigError(problem_report(problems, overrides))


def config_problems(cfg: DictConfig) -> Iterator[tuple[str, str]]:
    """``(dotted key, what is wrong)`` for each problem of ``cfg``, walking every node whose type is a schema
    dataclass (``OmegaConf.get_type``); untyped nodes (``_target_`` dicts) belong to their targets; then the
    rules that tie keys together (the joint bound's; the method schema's ``check``), one problem per key."""
    seen = set()
    for key, text in [*_walk(cfg, ""), *_joint_bound_problems(cfg), *_cross_field(cfg)]:
        if key not in seen:
            seen.add(key)
            yield key, text


def _cross_field(cfg: DictConfig) -> list[tuple[str, str]]:
    method = cfg.get("method") if isinstance(cfg, DictConfig) else None
    check = getattr(OmegaConf.get_type(method), "check", None) if isinstance(method, DictConfig) else None
    if check is None:
        return []
    try:
        return list(check(cfg))
    except Exception:  # noqa: BLE001 - a value of the wrong kind is reported by its own field's rule
        return []


def _joint_bound_problems(cfg: DictConfig) -> Iterator[tuple[str, str]]:
    # conf/bound/joint.yaml sets one task, but a command-line dataset.num_tasks wins over it (Hydra's order)
    # and would run a continual run labelled "joint"
    if cfg.get("bound") != "joint" or "dataset" not in cfg or "num_tasks" not in cfg.dataset:
        return
    tasks = cfg.dataset.num_tasks
    if tasks != 1:
        yield "dataset.num_tasks", (f"{tasks} tasks with +bound=joint: the joint bound trains every class as one "
                                    "task; drop dataset.num_tasks (the bound sets 1) or drop +bound=joint")


def problem_report(problems: list[tuple[str, str]], overrides: Iterable[str] = ()) -> str:
    """The paragraph of a :class:`ConfigError`: one line per problem, then how to fix it."""
    head = "the config has a problem" if len(problems) == 1 else f"the config has {len(problems)} problems"
    return f"{head}:\n{problem_lines(problems, overrides)}\n{_FIX}"


def problem_lines(problems: list[tuple[str, str]], overrides: Iterable[str] = ()) -> str:
    """One indented line per problem, naming the command-line override it came from, if any."""
    given = [(str(o).partition("=")[0].lstrip("+~"), str(o)) for o in overrides if "=" in str(o)]
    lines = []
    for key, text in problems:
        source = next((o for k, o in given if k == key or k.startswith(key + ".")), None)
        lines.append(f"  {key}: {text}" + (f" (command line: {source})" if source else ""))
    return "\n".join(lines)


def unknown_key(key: str, schema: type, prefix: str = "") -> str:
    """What to say about ``key``, which ``schema`` (a dataclass, the node at ``prefix``) does not declare: the
    closest keys it does."""
    known = [f.name for f in fields(schema) if not f.name.startswith("_")]
    close = [prefix + k for k in difflib.get_close_matches(key, known, n=3, cutoff=0.6)]
    if close:
        return f"no such key in {schema.__name__}; did you mean {' or '.join(close)}?"
    return f"no such key in {schema.__name__}; its keys are {', '.join(known)}"


def explain_compose_error(err: BaseException) -> str | None:
    """A norga message for Hydra's failure to override a key no schema has or to find a group's option
    (:func:`norga.help.explain_missing_option`), or None for other errors.

    Hydra answers ``train.epoch=3`` with "To append to your config use +train.epoch=3": a key that no schema
    declares is never what a run wants (norga refuses it), so the message names the closest real keys."""
    missing = explain_missing_option(err)
    if missing:
        return missing
    cause = err.__cause__
    schema = getattr(cause, "object_type", None)
    key, full_key = getattr(cause, "key", None), getattr(cause, "full_key", None)
    if not str(err).startswith("Could not override") or not is_dataclass(schema) or not key or not full_key:
        return None
    prefix = str(full_key)[: -len(str(key))]
    return problem_report([(str(full_key), unknown_key(str(key), schema, prefix))])


def _walk(node: DictConfig, prefix: str) -> Iterator[tuple[str, str]]:
    schema = OmegaConf.get_type(node)
    if not is_dataclass(schema):
        return
    declared = {f.name: f for f in fields(schema)}
    for key in node.keys():
        if key not in declared and not (prefix == "" and key == "hydra"):
            yield f"{prefix}{key}", unknown_key(str(key), schema, prefix)
    for name, spec in declared.items():
        if name not in node or OmegaConf.is_missing(node, name):
            continue
        try:
            value = node[name]
        except Exception:  # noqa: BLE001 - an interpolation that does not resolve is reported where it is used
            continue
        if isinstance(value, DictConfig):
            yield from _walk(value, f"{prefix}{name}.")
        elif spec.metadata:
            problem = _check(value, spec)
            if problem:
                yield f"{prefix}{name}", problem


def _check(value: Any, spec: Field) -> str | None:
    rules = spec.metadata
    unknown = sorted(set(rules) - set(RULE_KEYS))
    if unknown:  # a schema's typo must not turn a rule off silently
        raise TypeError(f"field {spec.name!r} declares metadata {unknown} that the validator does not know; the "
                        f"known rules are {', '.join(RULE_KEYS)}")
    if value is None:
        return None
    if isinstance(value, ListConfig | list | tuple):
        if len(value) < rules.get("min_items", 0):
            return f"{list(value)} needs at least {rules['min_items']} item(s)"
        for item in value:
            problem = _check_scalar(item, rules)
            if problem:
                return f"{list(value)}: item {problem}"
        return None
    return _check_scalar(value, rules)


#: the field-metadata keys a schema may declare; every one is enforced by :func:`validate`
RULE_KEYS = ("choices", "pattern", "means", "min_items", "min", "min_exclusive", "max", "max_exclusive")
_BOUNDS = ("min", "min_exclusive", "max", "max_exclusive")


def _check_scalar(value: Any, rules: dict) -> str | None:
    if "choices" in rules and value not in rules["choices"]:
        options = ", ".join(str(c) for c in rules["choices"] if c is not None)
        return f"{value!r} is not an option; choose one of {options}"
    if "pattern" in rules and not (isinstance(value, str) and re.fullmatch(rules["pattern"], value)):
        return f"{value!r} is not one of {rules.get('means', rules['pattern'])}"
    bounds = [k for k in _BOUNDS if k in rules]
    if not bounds or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        return f"{value} must be a finite number"
    if "min" in rules and value < rules["min"]:
        return f"{value} must be >= {rules['min']}"
    if "min_exclusive" in rules and value <= rules["min_exclusive"]:
        return f"{value} must be > {rules['min_exclusive']}"
    if "max" in rules and value > rules["max"]:
        return f"{value} must be <= {rules['max']}"
    if "max_exclusive" in rules and value >= rules["max_exclusive"]:
        return f"{value} must be < {rules['max_exclusive']}"
    return None
