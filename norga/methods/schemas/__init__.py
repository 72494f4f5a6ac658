"""Config schemas of the methods (``method.*``): Hydra checks every composed ``method`` node against its
method's dataclass, so a misspelt key or a wrong type fails at compose time with the valid keys listed.

Kept apart from the learners so that composing a config imports no torch. Each ``conf/method/<name>.yaml``
starts with ``defaults: [/schema/method/<name>@_here_, _self_]``; :func:`norga.config.register` stores every
dataclass listed in :data:`METHOD_SCHEMAS` under that name. The schemas of the first methods are here; a new
method adds a module to this package (``norga/methods/schemas/<name>.py``, torch-free) that defines
``SCHEMAS = {"<name>": <dataclass>}``, collected into :data:`METHOD_SCHEMAS` on import.
Field metadata ``min``/``max``/``choices`` are checked by :func:`norga.config.validate` before anything is built,
and so are the rules that relate several keys: each schema's ``check(cfg)`` yields ``(key, problem)`` for the
composed config ``cfg`` (the whole run's, as settings like ``top_k <= pool_size`` depend on ``dataset.num_tasks``).
The learners keep their own assertions for API users who skip the validator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


def positive(default: Any, **extra: Any) -> Any:
    """A field that must be > 0."""
    return field(default=default, metadata={"min_exclusive": 0, **extra})


def at_least(minimum: float, default: Any) -> Any:
    return field(default=default, metadata={"min": minimum})


def choice(default: str | None, *choices: str | None) -> Any:
    return field(default=default, metadata={"choices": choices})


def layers(*default: int) -> Any:
    return field(default_factory=lambda: list(default), metadata={"min_items": 0})


PREFIX_LAYOUTS = ("per_sample", "reference")


@dataclass
class MethodConfig:
    """Keys every method has."""

    _target_: str = MISSING
    name: str = MISSING
    # NoRGa's gate on the prefix logits (conf/gate); every other method refuses one with a clear error
    gate: str | None = None
    # the whole evaluation batch uses its most frequent selection; presets set it where the reference does, and
    # the per-sample result is reported too (docs/algorithm.md#d2-batchwise-selection-at-test-methodbatchwise_prompt)
    batchwise_prompt: bool = False

    @classmethod
    def check(cls, cfg: Any) -> Iterator[tuple[str, str]]:
        """``(key, problem)`` for each rule between keys that ``cfg`` (the composed run config) breaks. The base
        rule: no gate, which only NoRGa's gated prefixes take."""
        gate = cfg.method.get("gate")
        if gate is not None:
            name = cfg.method.name
            yield "method.gate", (f"method={name} takes no gate (got {gate}): the NoRGa gate acts on NoRGa's gated "
                                  f"prefix prompts; use method=norga gate={gate}, or drop gate=")

    @staticmethod
    def no_selection(cfg: Any) -> Iterator[tuple[str, str]]:
        """The rule of methods that select no prompts: nothing for ``batchwise_prompt`` to vote on."""
        if cfg.method.batchwise_prompt:
            yield "method.batchwise_prompt", (f"method={cfg.method.name} selects no prompts, so there is no "
                                              "selection for a test batch to vote on: drop "
                                              "method.batchwise_prompt=true")


# ---- HiDe-Prompt and NoRGa ----------------------------------------------------------------------------------
@dataclass
class ScheduleConfig:
    name: str = choice("step", "constant", "step", "multistep", "cosine", "coda_cosine")
    step_epochs: int = positive(30)
    gamma: float = positive(0.1)
    milestones: list[int] = field(default_factory=list)  # multistep: the epochs (0-based) where lr *= gamma
    min_lr: float = at_least(0.0, 1e-5)


@dataclass
class TIITAPConfig:
    epochs: int = at_least(0, 30)
    lr: float = positive(0.005)  # scaled by batch / 256
    momentum: float = at_least(0.0, 0.9)
    weight_decay: float = at_least(0.0, 0.0)


@dataclass
class TIIConfig:
    epochs: int = at_least(0, 20)
    lr: float = positive(0.0005)
    mlp_structure: list[int] = field(default_factory=lambda: [2], metadata={"min_items": 1, "min": 1})
    scheduler: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="step"))
    tap: TIITAPConfig = field(default_factory=TIITAPConfig)
    # gradient-norm clip of the TII stage: the reference clips it at 1.0 on every dataset, also where the
    # prompts are clipped at 2 (5-Datasets)
    clip_grad: float | None = positive(1.0)
    # Train the MLP on backbone features computed once per task (no augmentation). Off in the paper presets:
    # their augmentation changes the features every epoch, so this changes results (and is far faster).
    feature_cache: bool = False


@dataclass
class TAPConfig:
    epochs: int = at_least(0, 30)
    lr: float = positive(0.005)
    samples_per_class_factor: int = positive(5)
    momentum: float = at_least(0.0, 0.9)
    weight_decay: float = at_least(0.0, 0.0)


@dataclass
class HiDePromptConfig(MethodConfig):
    _target_: str = "norga.methods.hide_prompt.HiDePrompt"
    name: str = "hide"
    prompt_length: int = positive(5)
    prompt_layers: list[int] = layers(0, 1, 2, 3, 4)
    prompt_momentum: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    reg: float = at_least(0.0, 0.1)
    contrastive_temperature: float = positive(0.8)
    # per_sample: correct prefix tuning. reference: the reference code's batch-mixing layout
    # (docs/algorithm.md#d1-prefix-layout-methodprefix_layout)
    prefix_layout: str = choice("per_sample", *PREFIX_LAYOUTS)
    statistics: str = choice("covariance", "covariance", "variance", "multi_centroid")
    n_centroids: int = positive(10)
    tii: TIIConfig = field(default_factory=TIIConfig)
    tap: TAPConfig = field(default_factory=TAPConfig)


@dataclass
class NoRGaConfig(HiDePromptConfig):
    _target_: str = "norga.methods.norga.NoRGa"
    name: str = "norga"
    gate: str | None = "tanh"

    @classmethod
    def check(cls, cfg: Any) -> Iterator[tuple[str, str]]:
        if cfg.method.get("gate") is None:
            yield "method.gate", ("method=norga needs a gate (conf/gate: e.g. gate=tanh); for prefix tuning "
                                  "without a gate use method=hide")


# ---- key-query prompt pools: L2P, DualPrompt, S-Prompt++ --------------------------------------------------
@dataclass
class KeyQueryConfig(MethodConfig):
    """A pool of prompts with keys, chosen per sample by cosine similarity between the frozen backbone's class
    token and the keys (docs/algorithm.md#baselines)."""

    prompt_length: int = positive(5)
    prompt_layers: list[int] = layers(0)
    pool_size: int | None = positive(None)  # None: one prompt per task
    top_k: int = positive(1)
    # weight of the pull term (the summed cosine between the query and the selected keys, subtracted)
    pull_coeff: float = at_least(0.0, 1.0)
    # train with the prompt of the current task (slot t) instead of the matched one
    prompt_mask: bool = False
    # at task t > 0, start prompt t as a copy of prompt t - 1
    shared_prompt_pool: bool = False
    # during training the whole batch uses its top_k most frequent matches (L2P as the reference runs it)
    train_batchwise: bool = False
    # at test, match only the keys of tasks seen so far (the reference matches every key: False)
    match_seen_keys: bool = False

    @classmethod
    def check(cls, cfg: Any) -> Iterator[tuple[str, str]]:
        yield from super().check(cfg)
        m, num_tasks = cfg.method, cfg.dataset.num_tasks
        pool = m.pool_size or num_tasks  # None: one prompt per task
        if m.top_k > pool:
            yield "method.top_k", (f"{m.top_k} is larger than the pool (method.pool_size={pool}"
                                   f"{'' if m.pool_size else ', one prompt per task'}): choose top_k <= pool_size")
        elif m.prompt_mask and pool < num_tasks * m.top_k:
            yield "method.pool_size", (f"{pool} is too small for method.prompt_mask=true, which trains prompts "
                                       f"t*top_k..(t+1)*top_k-1 on task t: {num_tasks} tasks x top_k {m.top_k} "
                                       f"need {num_tasks * m.top_k} prompts")


@dataclass
class L2PConfig(KeyQueryConfig):
    _target_: str = "norga.methods.l2p.L2P"
    name: str = "l2p"
    prompt_length: int = positive(5)
    prompt_layers: list[int] = layers(0)
    pool_size: int | None = positive(30)
    top_k: int = positive(5)
    pull_coeff: float = at_least(0.0, 0.1)
    train_batchwise: bool = True


@dataclass
class DualPromptConfig(KeyQueryConfig):
    _target_: str = "norga.methods.dualprompt.DualPrompt"
    name: str = "dualprompt"
    g_prompt_length: int = positive(5)
    g_prompt_layers: list[int] = layers(0, 1)
    prompt_length: int = positive(20)
    prompt_layers: list[int] = layers(2, 3, 4)
    prompt_mask: bool = True
    shared_prompt_pool: bool = True
    prefix_layout: str = choice("per_sample", *PREFIX_LAYOUTS)

    @classmethod
    def check(cls, cfg: Any) -> Iterator[tuple[str, str]]:
        yield from super().check(cfg)
        m = cfg.method
        both = sorted(set(m.g_prompt_layers) & set(m.prompt_layers))
        if both:
            yield "method.g_prompt_layers", (f"blocks {both} are in both method.g_prompt_layers "
                                             f"{list(m.g_prompt_layers)} and method.prompt_layers "
                                             f"{list(m.prompt_layers)}: a block takes the G-prompt or an "
                                             "E-prompt, not both")


@dataclass
class SPromptConfig(DualPromptConfig):
    _target_: str = "norga.methods.sprompt.SPromptPP"
    name: str = "sprompt"
    g_prompt_layers: list[int] = layers()
    prompt_layers: list[int] = layers(0, 1, 2, 3, 4)


# ---- frozen-feature baselines: SimpleCIL, RanPAC --------------------------------------------------------------
@dataclass
class SimpleCILConfig(MethodConfig):
    """Class-mean prototypes of frozen features, cosine nearest mean (docs/algorithm.md#simplecil); no training,
    nothing to set."""

    _target_: str = "norga.methods.simplecil.SimpleCIL"
    name: str = "simplecil"

    @classmethod
    def check(cls, cfg: Any) -> Iterator[tuple[str, str]]:
        yield from super().check(cfg)
        yield from cls.no_selection(cfg)


def ridge_grid() -> list[float]:
    return [10.0**k for k in range(-8, 9)]


@dataclass
class AdaptationConfig:
    """RanPAC's first-session adaptation: AdaptFormer adapters parallel to every block's MLP, trained on task 0
    with a cosine head, then frozen (the authors' CIFAR-100 setting)."""

    epochs: int = at_least(0, 20)
    lr: float = positive(0.01)  # not scaled by the batch size (the authors' value, at batch 48)
    momentum: float = at_least(0.0, 0.9)
    weight_decay: float = at_least(0.0, 5e-4)
    min_lr: float = at_least(0.0, 0.0)  # the cosine annealing's floor
    bottleneck: int = positive(64)
    dropout: float = field(default=0.1, metadata={"min": 0.0, "max_exclusive": 1.0})
    scale: float = positive(0.1)


@dataclass
class RanPACConfig(MethodConfig):
    """Random projection + ReLU of frozen features and a ridge head solved in closed form
    (docs/algorithm.md#ranpac)."""

    _target_: str = "norga.methods.ranpac.RanPAC"
    name: str = "ranpac"
    projection_dim: int = positive(10000)  # M, the projection's width; G is M x M float64
    ridge_grid: list[float] = field(default_factory=ridge_grid, metadata={"min_items": 1, "min_exclusive": 0})
    # a task's first share of (seeded, shuffled) samples fits each candidate ridge, the rest validates it
    ridge_fit_fraction: float = field(default=0.8, metadata={"min_exclusive": 0.0, "max_exclusive": 1.0})
    first_session_adaptation: bool = False
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)

    @classmethod
    def check(cls, cfg: Any) -> Iterator[tuple[str, str]]:
        yield from super().check(cfg)
        yield from cls.no_selection(cfg)  # its value ranges (ridge_fit_fraction, dropout) are field metadata


# ---- CODA-Prompt --------------------------------------------------------------------------------------------
@dataclass
class CODAConfig(MethodConfig):
    """Prefix prompts assembled per sample from a pool of components, weighted by attention-masked cosine
    similarity between the query and each component's key (docs/algorithm.md#coda-prompt)."""

    _target_: str = "norga.methods.coda_prompt.CODAPrompt"
    name: str = "coda"
    # N components per prompted block; task t draws N / num_tasks of them at its start
    pool_size: int = positive(100)
    # L, even: the first L/2 rows of a prompt are the key prefix, the last L/2 the value prefix
    prompt_length: int = positive(8)
    prompt_layers: list[int] = layers(0, 1, 2, 3, 4)
    # mu of the orthogonality penalty on components, keys and attention vectors (0: off, the authors' current
    # scripts; 1e-7: their first release on CIFAR-100, its 0.1 times the 1e-6 inside its penalty function)
    ortho_weight: float = at_least(0.0, 0.0)

    @classmethod
    def check(cls, cfg: Any) -> Iterator[tuple[str, str]]:
        yield from super().check(cfg)
        yield from cls.no_selection(cfg)
        m, num_tasks = cfg.method, cfg.dataset.num_tasks
        if m.prompt_length % 2:
            yield "method.prompt_length", (f"{m.prompt_length} must be even: the first half of a prompt becomes "
                                           "the key prefix, the second half the value prefix")
        if m.pool_size < num_tasks:
            yield "method.pool_size", (f"{m.pool_size} components cannot be shared by {num_tasks} tasks: the "
                                       f"pool needs at least one component per task (pool_size >= {num_tasks})")


#: schema name (``/schema/method/<name>``) -> dataclass
METHOD_SCHEMAS: dict[str, type] = {
    "hide": HiDePromptConfig,
    "norga": NoRGaConfig,
    "l2p": L2PConfig,
    "dualprompt": DualPromptConfig,
    "sprompt": SPromptConfig,
    "simplecil": SimpleCILConfig,
    "ranpac": RanPACConfig,
    "coda": CODAConfig,
}


def _collect() -> None:
    """Add the ``SCHEMAS`` of every module of this package (imported here, after the shared bases exist)."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, schema in getattr(module, "SCHEMAS", {}).items():
            if name in METHOD_SCHEMAS:
                raise ValueError(f"{module.__name__} registers the method schema {name!r} twice")
            METHOD_SCHEMAS[name] = schema


_collect()
