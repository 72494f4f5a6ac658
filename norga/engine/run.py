"""The run driver: builds everything from the config, runs the tasks stage by stage, evaluates, writes
checkpoints and ``metrics.json``, and logs."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from norga.data import build_benchmark
from norga.engine.checkpoint import load_checkpoint, save_atomic
from norga.engine.evaluate import Evaluator
from norga.engine.seeding import seed_everything
from norga.metrics import summarize
from norga.models.checkpoint_formats import check_checkpoint_available
from norga.models.vit import build_frozen_backbone

log = logging.getLogger("norga")

# Keys that do not change results: a resumed run may differ from its checkpoint in these.
RESUME_FREE_KEYS = ("resume", "progress", "device", "logger", "paths", "train.num_workers", "eval.cache")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} asked for, but torch sees no CUDA device; use device=cpu")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "tf32", "bf16"):
        raise ValueError(f"train.precision must be auto, fp32, tf32 or bf16, got {precision!r}")
    if precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return precision


def _flat(cfg: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, path + "."))
        else:
            out[path] = value
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """Keys (dotted) whose values differ between two resolved configs, ignoring result-free keys."""
    a, b = _flat(old), _flat(new)
    keys = sorted(set(a) | set(b))
    free = tuple(RESUME_FREE_KEYS)
    return [k for k in keys if a.get(k) != b.get(k) and not any(k == f or k.startswith(f + ".") for f in free)]


class ContinualRun:
    """One run: a learner trained task by task on a benchmark, with evaluation after every task."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.device = resolve_device(cfg.device)
        with_precision = resolve_precision(cfg.train.precision, self.device)
        OmegaConf.set_struct(cfg, False)
        cfg.train.precision = with_precision
        OmegaConf.set_struct(cfg, True)
        self.config = OmegaConf.to_container(cfg, resolve=True)
        # Fail on missing weights before any data is read.
        check_checkpoint_available(cfg.backbone)
        self.benchmark = build_benchmark(cfg.dataset, cfg.backbone.img_size, cfg.seed,
                                         mean=list(cfg.backbone.mean), std=list(cfg.backbone.std))
        # Seed before each build, so random initialisations (prompts, heads, a backbone with
        # pretrained=false) depend on the seed alone.
        seed_everything(cfg.seed)
        backbone = build_frozen_backbone(cfg.backbone)
        seed_everything(cfg.seed)
        self.learner = get_class(cfg.method._target_)(cfg, backbone, self.benchmark, self.device)
        self.evaluator = Evaluator(self.benchmark, self.device, cfg.eval.batch_size, cfg.train.num_workers,
                                   cache=cfg.eval.cache and cfg.method.prefix_layout == "per_sample",
                                   batchwise_prompt=cfg.method.batchwise_prompt, progress=cfg.progress,
                                   max_samples=cfg.eval.max_samples_per_task)
        self.logger = instantiate(cfg.logger)
        self.acc: list[list[float]] = []
        self.acc_pre_tap: list[list[float]] = []
        self.tii_acc: list[list[float]] = []
        self.extra: list[dict] = []
        self.epoch_counter = 0
        self.wall_time = 0.0

    # ---- checkpoints -------------------------------------------------------------------------------
    def _state(self, task: int) -> dict:
        return {"task": task, "learner": self.learner.state_dict(), "evaluator": self.evaluator.state_dict(),
                "acc": self.acc, "acc_pre_tap": self.acc_pre_tap, "tii_acc": self.tii_acc, "extra": self.extra,
                "epoch_counter": self.epoch_counter, "wall_time": self.wall_time, "config": self.config,
                "logger_run_id": self.logger.run_id}

    def _last_checkpoint(self) -> Path | None:
        found = sorted(self.ckpt_dir.glob("task_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        return found[-1] if found else None

    def _resume(self) -> int:
        path = self._last_checkpoint()
        if path is None:
            log.info("resume=true but no checkpoint in %s: starting from task 0", self.ckpt_dir)
            return 0
        state = load_checkpoint(path)
        diff = config_differences(state["config"], self.config)
        if diff:
            lines = "\n".join(f"  {k}: {_flat(state['config']).get(k)!r} -> {_flat(self.config).get(k)!r}"
                              for k in diff)
            raise ValueError(f"cannot resume from {path}: the config differs in keys that change results:\n"
                             f"{lines}\nrun with the checkpoint's values, or start a new run directory")
        self.learner.load_state_dict(state["learner"])
        self.evaluator.load_state_dict(state["evaluator"])
        self.acc, self.acc_pre_tap, self.tii_acc = state["acc"], state["acc_pre_tap"], state["tii_acc"]
        self.extra, self.epoch_counter = state["extra"], state["epoch_counter"]
        self.wall_time = state["wall_time"]
        self._resume_id = state.get("logger_run_id")
        log.info("resumed from %s: tasks 0..%d done, continuing with task %d", path, state["task"],
                 state["task"] + 1)
        return state["task"] + 1

    # ---- metrics -----------------------------------------------------------------------------------
    def metrics(self, finished: bool) -> dict:
        out: dict[str, Any] = {
            "finished": finished,
            "dataset": self.cfg.dataset.name,
            "backbone": self.cfg.backbone.name,
            "method": self.cfg.method.name,
            "gate": self.cfg.method.gate,
            "seed": self.cfg.seed,
            "num_tasks": self.benchmark.num_tasks,
            "tasks_done": len(self.acc),
            "acc_matrix": self.acc,
            "acc_matrix_pre_tap": self.acc_pre_tap,
            "tii_acc_matrix": self.tii_acc,
        }
        if self.acc:
            out.update(summarize(self.acc))
            out["tii_acc"] = sum(self.tii_acc[-1]) / len(self.tii_acc[-1])
            out.update({f"{k}_pre_tap": v for k, v in summarize(self.acc_pre_tap).items()})
        if self.cfg.method.batchwise_prompt and self.extra:
            out["per_sample_prompt"] = self.extra[-1]
        out["vit_passes"] = round(self.evaluator.vit_passes, 4)
        out["wall_time_s"] = round(self.wall_time, 2)
        out["config"] = self.config
        return out

    def _write_metrics(self, finished: bool) -> dict:
        metrics = self.metrics(finished)
        tmp = self.run_dir / ".metrics.json.tmp"
        tmp.write_text(json.dumps(metrics, indent=1))
        tmp.replace(self.run_dir / "metrics.json")
        return metrics

    # ---- the run -----------------------------------------------------------------------------------
    def _on_epoch(self, task: int):
        def log_epoch(values: dict) -> None:
            self.epoch_counter += 1
            self.logger.log({**values, "epoch": self.epoch_counter, "task_id": task})
        return log_epoch

    def _evaluate(self, task: int) -> tuple[list[float], list[float], dict]:
        self.learner.eval_mode()
        result = self.evaluator.evaluate(self.learner, task)
        extra = {}
        if self.cfg.method.batchwise_prompt:
            extra = {"acc": [s.acc_per_sample_prompt for s in result.tasks],
                     "tii_acc": [s.tii_acc_per_sample_prompt for s in result.tasks]}
        return result.accs, result.tii_accs, extra

    def run_task(self, task: int) -> None:
        learner, on_epoch = self.learner, self._on_epoch(task)
        learner.tii_train(task, on_epoch)
        learner.tii_stats_stage(task)
        learner.tii_tap(task)
        learner.wtp_train(task, on_epoch)
        learner.wtp_stats_stage(task)
        pre, _, _ = self._evaluate(task)
        learner.wtp_tap(task)
        acc, tii, extra = self._evaluate(task)
        self.acc_pre_tap.append(pre)
        self.acc.append(acc)
        self.tii_acc.append(tii)
        self.extra.append(extra)

    def run(self) -> dict:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._resume_id = None
        start = self._resume() if cfg.resume else 0
        if not cfg.resume and self._last_checkpoint() is not None:
            raise FileExistsError(f"{self.ckpt_dir} already holds checkpoints: pass resume=true to continue "
                                  "that run, or use a new output directory")
        self.logger.start(self.config, self.run_dir, resume_id=self._resume_id)
        exit_code = 1
        try:
            if cfg.backbone.name == "tiny":
                log.info("backbone: the embedded tiny ViT, pre-trained on generated images "
                         "(scripts/pretrain_embedded_vit.py), for demos and tests only")
            for task in range(start, self.benchmark.num_tasks):
                started = time.perf_counter()
                self.run_task(task)
                self.wall_time += time.perf_counter() - started
                save_atomic(self._state(task), self.ckpt_dir / f"task_{task}.pt")
                metrics = self._write_metrics(finished=task == self.benchmark.num_tasks - 1)
                row = " ".join(f"{a:.1f}" for a in self.acc[-1])
                log.info("task %d/%d: acc [%s] | avg %.2f (pre-TAP %.2f) | TII %.2f | %.0fs", task + 1,
                         self.benchmark.num_tasks, row, sum(self.acc[-1]) / len(self.acc[-1]),
                         sum(self.acc_pre_tap[-1]) / len(self.acc_pre_tap[-1]),
                         sum(self.tii_acc[-1]) / len(self.tii_acc[-1]), self.wall_time)
                self.logger.log({"task": task, "eval/avg_acc": metrics["final_avg_acc"],
                                 "eval/avg_acc_pre_tap": sum(self.acc_pre_tap[-1]) / len(self.acc_pre_tap[-1]),
                                 "eval/tii_acc": metrics["tii_acc"],
                                 **{f"eval/acc_task_{j}": a for j, a in enumerate(self.acc[-1])}})
                self.logger.log_matrix("acc_matrix", self.acc, task)
            metrics = self._write_metrics(finished=True)
            summary = {k: metrics[k] for k in ("final_avg_acc", "cum_avg_acc", "forgetting", "tii_acc",
                                               "final_avg_acc_pre_tap", "vit_passes", "wall_time_s")}
            self.logger.summary(summary)
            log.info("done: FA %.2f | CA %.2f | FFM %.2f | TII %.2f | %d ViT passes over test sets | "
                     "%.0fs | %s", metrics["final_avg_acc"], metrics["cum_avg_acc"], metrics["forgetting"],
                     metrics["tii_acc"], round(metrics["vit_passes"]), metrics["wall_time_s"],
                     self.run_dir / "metrics.json")
            exit_code = 0
            return metrics
        finally:
            self.logger.finish(exit_code)


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run ``cfg`` with outputs in ``run_dir``; returns the final metrics."""
    return ContinualRun(cfg, run_dir).run()
