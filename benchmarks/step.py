"""Throughput of any method's training step, query forward and evaluation forward: plain path vs fast path.

    python benchmarks/step.py method=norga backbone=sup21k backbone.pretrained=false train.batch_size=8 \
        train.precision=bf16 logger=none [--iters 5] [--warmup 2] [--compile] [--attention auto]

The three measurements come from the learner contract (norga.methods.base), so every method is timed on its
own code: ``benchmark_step(task)`` (the loss its training stage optimises, with backward, clipping and an Adam
step; "n/a" for a learner that does not train), ``query`` (the frozen forward the evaluator caches) and
``features`` under the learner's own selection (the evaluation forward).

Arguments without ``--`` are Hydra overrides, composed exactly as ``run.py`` composes them. Both paths run in
the same process on the same learner and random inputs of the configured batch:

* plain: fp32, explicit attention everywhere (timm's ``fused_attn=False``), no torch.compile;
* fast: the configured precision (``train.precision``; ``auto`` = bf16 on CUDA, fp32 on CPU), fused attention
  (prefix layers: ``train.attention`` / ``--attention``, default ``auto``), torch.compile when
  ``train.compile`` / ``--compile`` is on.

The two paths alternate iteration by iteration and each reports its median time, so a load change on a
shared machine hits both alike. Peak memory is CUDA's max_memory_allocated, or on CPU the process's peak RSS
(VmHWM, reset before each measurement where the kernel allows). The last line is ``speedup <ratio>x``: fast
over plain training-step throughput.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from timm.layers import Attention

from norga.config import register
from norga.engine.distributed import init_distributed
from norga.engine.run import resolve_precision
from norga.models.attention import PrefixAttention, configure_prefix_attention, describe_prefix_impl
from norga.models.vit import build_frozen_backbone

CONF = Path(__file__).resolve().parents[1] / "conf"
OWN_KEYS = ("train.compile", "train.attention")  # read here even while the config schema lacks them


@dataclass(frozen=True)
class Mode:
    name: str
    precision: str
    fused: bool
    attention: str
    compile: bool


class SyntheticBenchmark:
    """What a learner's constructor reads from a benchmark: ``num_tasks`` tasks of equally many classes."""

    def __init__(self, num_tasks: int, classes_per_task: int) -> None:
        self.num_tasks = num_tasks
        self.num_classes = num_tasks * classes_per_task
        self.task_classes = [list(range(t * classes_per_task, (t + 1) * classes_per_task)) for t in range(num_tasks)]
        self.class_to_task = [t for t in range(num_tasks) for _ in range(classes_per_task)]

    def seen_classes(self, task: int) -> list[int]:
        return [c for t in range(task + 1) for c in self.task_classes[t]]

    def class_mask(self, task: int) -> torch.Tensor:
        mask = torch.zeros(self.num_classes, dtype=torch.bool)
        mask[self.task_classes[task]] = True
        return mask

    def seen_mask(self, task: int) -> torch.Tensor:
        return torch.as_tensor(self.class_to_task) <= task


def compose_config(overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
    """The run config for ``overrides``, plus the values of :data:`OWN_KEYS` when the schema lacks them."""
    register()
    own = {}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        try:
            cfg = compose(config_name="config", overrides=overrides)
        except ConfigCompositionException:
            rest = []
            for item in overrides:
                key, _, value = item.lstrip("+").partition("=")
                if key in OWN_KEYS:
                    own[key] = value
                else:
                    rest.append(item)
            if not own:
                raise
            cfg = compose(config_name="config", overrides=rest)
    return cfg, own


def parse(argv: list[str]) -> tuple[argparse.Namespace, DictConfig]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per path and measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per path first")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile on the fast path (default: train.compile, else off)")
    parser.add_argument("--attention", default=None, help="prefix attention of the fast path (default: "
                        "train.attention, else auto)")
    parser.add_argument("--classes-per-task", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for run.py")
    args = parser.parse_args(argv)
    cfg, own = compose_config(args.overrides)
    if args.compile is None:
        value = own.get("train.compile", OmegaConf.select(cfg, "train.compile", default=False))
        args.compile = str(value).lower() in ("true", "1", "yes")
    if args.attention is None:
        args.attention = str(own.get("train.attention", OmegaConf.select(cfg, "train.attention", default="auto")))
    return args, cfg


# ---- measurement ---------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # "5" resets the peak RSS (Linux >= 4.0); otherwise VmHWM is the process's lifetime peak
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def set_mode(learner, mode: Mode) -> None:
    """Switch the shared learner between the paths (its precision is a plain attribute read at every forward)."""
    learner.precision = mode.precision
    if learner.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = mode.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = mode.precision == "tf32"
    for module in learner.backbone.modules():
        if isinstance(module, Attention):
            module.fused_attn = mode.fused
        if isinstance(module, PrefixAttention):
            module.prefix_impl = mode.attention


def build_steps(learner, mode: Mode, batch: int) -> dict[str, Callable[[], object] | None]:
    """The three measured callables of one path, on fixed random inputs (None: the learner does not train)."""
    cfg, device = learner.cfg, learner.device
    gen = torch.Generator().manual_seed(0)
    size = cfg.backbone.img_size
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    classes = learner.benchmark.task_classes[0]
    y = torch.as_tensor(classes, device=device)[torch.randint(0, len(classes), (batch,), generator=gen).to(device)]
    last = learner.benchmark.num_tasks - 1
    with torch.no_grad():
        query = learner.query(x)
        selection = learner.select(query, last)

    def query_fn(x):
        with torch.no_grad():
            return learner.query(x)

    def features_fn(x):
        with torch.no_grad():
            return learner.features(x if learner.features_need_images else None, selection, query)

    train_step = None
    step = learner.benchmark_step(0)
    if step is not None:
        loss_fn, params = step
        optimizer = torch.optim.Adam(params, lr=1e-4)
        clip = cfg.train.clip_grad
        if mode.compile:
            loss_fn = torch.compile(loss_fn)

        def train_step():
            loss = loss_fn(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            return loss

    if mode.compile:
        query_fn, features_fn = torch.compile(query_fn), torch.compile(features_fn)
    return {"train step": train_step, "query forward": lambda: query_fn(x), "eval forward": lambda: features_fn(x)}


def main(argv: list[str]) -> float:
    args, cfg = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = init_distributed(cfg.device).device
    precision = resolve_precision(cfg.train.precision, device)
    torch.manual_seed(cfg.seed)
    backbone = build_frozen_backbone(cfg.backbone)
    benchmark = SyntheticBenchmark(cfg.dataset.num_tasks, args.classes_per_task)
    learner = get_class(cfg.method._target_)(cfg, backbone, benchmark, device)
    attention = configure_prefix_attention(learner.backbone, args.attention, device)
    modes = [Mode("plain", "fp32", False, "explicit", False),
             Mode("fast", precision, True, attention, args.compile)]
    batch = cfg.train.batch_size
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"device {device}{threads} | torch {torch.__version__} | backbone {cfg.backbone.name} "
          f"(pretrained={cfg.backbone.pretrained}) | method {cfg.method.name} gate {cfg.method.get('gate')} | "
          f"batch {batch}")
    for mode in modes:
        kind = "sdpa, prefix layers " + describe_prefix_impl(mode.attention, device) if mode.fused else "explicit"
        print(f"  {mode.name:5s}: precision {mode.precision}, attention {kind}, "
              f"compile {'on' if mode.compile else 'off'}")

    steps = {}
    memory = {}
    for mode in modes:
        set_mode(learner, mode)
        steps[mode.name] = build_steps(learner, mode, batch)
        for kind, fn in steps[mode.name].items():
            if fn is None:
                continue
            started = time.perf_counter()
            for _ in range(max(args.warmup, 1)):  # warm-up (and compilation) before any measurement
                fn()
            sync(device)
            if mode.compile and kind == "train step":
                print(f"  {mode.name} {kind}: warm-up incl. compilation {time.perf_counter() - started:.1f}s")
            reset_peak(device)
            fn()
            sync(device)
            memory[mode.name, kind] = peak_mib(device)

    measured = [kind for kind, fn in steps["plain"].items() if fn is not None]
    times: dict[tuple[str, str], list[float]] = {}
    for kind in measured:
        for _ in range(args.iters):
            for mode in modes:  # alternate the paths, so a change of machine load hits both alike
                set_mode(learner, mode)
                fn = steps[mode.name][kind]
                sync(device)
                started = time.perf_counter()
                fn()
                sync(device)
                times.setdefault((mode.name, kind), []).append(time.perf_counter() - started)

    set_mode(learner, modes[0])
    plain_feats = steps["plain"]["eval forward"]()
    set_mode(learner, modes[1])
    fast_feats = steps["fast"]["eval forward"]()
    diff = (fast_feats - plain_feats).abs().max().item()
    rel = ((fast_feats - plain_feats).norm() / plain_feats.norm()).item()

    unit = "MiB allocated (CUDA peak)" if device.type == "cuda" else "MiB RSS (peak)"
    print(f"\n{'':6s}{'':14s}{'img/s':>10s}{'median s':>10s}{'spread':>9s}{unit:>28s}")
    rate = {}
    for kind in measured:
        for mode in modes:
            ts = times[mode.name, kind]
            med = statistics.median(ts)
            rate[mode.name, kind] = batch / med
            spread = (max(ts) - min(ts)) / med
            print(f"{mode.name:6s}{kind:14s}{batch / med:10.2f}{med:10.3f}{spread:8.0%} "
                  f"{memory[mode.name, kind]:27.0f}")
    ratios = {kind: rate["fast", kind] / rate["plain", kind] for kind in measured}
    print(f"\nfast vs plain evaluation features: max |diff| {diff:.3g}, relative {rel:.3g}")
    print("speedups: " + " | ".join(f"{kind} {r:.2f}x" for kind, r in ratios.items()))
    # the headline: the training step, or (a learner that does not train) the evaluation forward
    headline = ratios.get("train step", ratios["eval forward"])
    print(f"speedup {headline:.2f}x")
    return headline


if __name__ == "__main__":
    main(sys.argv[1:])
