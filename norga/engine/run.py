"""The run driver: builds everything from the config, runs any learner task by task and stage by stage,
evaluates, writes checkpoints and ``metrics.json``, and logs. It knows no method: the learner contract
(:mod:`norga.methods.base`) is all it uses.

A run directory is an append-only record of one run. A command that would change another run's record (no
``resume=true`` in a directory that holds a run; a resume whose config differs in keys that change results)
is refused before anything in the directory is written. A resumed run keeps the original ``.hydra/`` and
adds a line to ``resumes.log``. A run that fails writes its error to ``run.log`` and to ``metrics.json``
(``finished: false``, ``error``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from norga.config import validate
from norga.data import build_benchmark
from norga.engine import record
from norga.engine.checkpoint import load_checkpoint, save_atomic
from norga.engine.distributed import barrier, broadcast_object, cleanup, init_distributed
from norga.engine.evaluate import Evaluator
from norga.engine.faults import maybe_crash
from norga.engine.logging import NullLogger, progress_bars, to_run_log
from norga.engine.options import refuse_untaken_options
from norga.engine.protocol_record import protocol_record, with_protocol_defaults
from norga.engine.seeding import seed_everything
from norga.engine.stages import Stage, StageContext, check_stages
from norga.engine.threads import set_threads
from norga.errors import ConfigError, NorgaError, RunRefusedError
from norga.fidelity import fidelity_of_config
from norga.metrics import summarize
from norga.models.checkpoint_formats import check_checkpoint_available
from norga.models.vit import build_frozen_backbone

log = logging.getLogger("norga")

@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """A ValueError raised while building from the config (a learner's settings it cannot combine, tasks that
    do not divide the classes, prompt layers outside the backbone) is a config error: its message names the
    keys; a NorgaError passes as it is."""
    try:
        yield
    except ValueError as err:
        if isinstance(err, NorgaError):
            raise
        raise ConfigError(f"{err} (python run.py --cfg job prints the composed config)") from err



def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "tf32", "bf16"):
        raise ValueError(f"train.precision must be auto, fp32, tf32 or bf16, got {precision!r}")
    if precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return precision


class ContinualRun:
    """One run: any learner (:mod:`norga.methods.base`) trained task by task on a benchmark, stage by stage,
    with the evaluations its stages ask for.

    Checkpoints (``<run dir>/checkpoints``), all written atomically:

    * ``last.pt``: the cursor (task, stage, epoch to do next), the learner's modules, the stage's optimiser
      and scheduler state, the accuracy matrices, the learner's artifacts so far and counters; rewritten after
      every epoch and stage.
    * ``<artifact>.pt``: files a learner writes once with ``ctx.save_artifact`` (e.g. HiDe-Prompt's class
      statistics ``{tii,wtp}_stats_task_<t>.pt``: large, and never changing once computed).
    * ``task_<t>.pt``: ``last.pt`` as it was when task t finished; kept.

    No RNG state is stored: every epoch of every stage seeds itself from (seed, task, stage name, epoch).
    """

    def __init__(self, cfg: DictConfig, run_dir: str | Path, launch: dict[str, str] | None = None,
                 parallel_jobs: int = 1) -> None:
        """``launch``: how the run was launched, written once to the run directory: ``.hydra/<name>`` for
        each name ending in ``.yaml`` (the app passes Hydra's config.yaml, hydra.yaml, overrides.yaml), and
        ``command``, the line a resume records. ``parallel_jobs``: the jobs running beside this one, for the
        share of the CPU cores it takes (:mod:`norga.engine.threads`)."""
        validate(cfg)  # the app has checked already; API users get the same checks
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.dist = init_distributed(cfg.device)
        self.device = self.dist.device
        if self.dist.distributed:
            # Hydra names run dirs by the clock, which can differ between ranks: rank 0's dir wins
            self.run_dir = Path(broadcast_object(str(self.run_dir)))
            self.ckpt_dir = self.run_dir / "checkpoints"
        with_precision = resolve_precision(cfg.train.precision, self.device)
        OmegaConf.set_struct(cfg, False)
        cfg.train.precision = with_precision
        OmegaConf.set_struct(cfg, True)
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self.logger: Any = NullLogger()
        # evaluation tag ("" for the task's own evaluation) -> accuracy matrix; task-identification accuracy
        self.matrices: dict[str, list[list[float]]] = {}
        self.tii_acc: list[list[float | None]] = []
        self.extra: list[dict] = []
        self.artifacts: list[str] = []
        self.epoch_counter = 0
        self.wall_time = 0.0
        self._clock = time.perf_counter()
        self._resume_id: str | None = None
        self._saved: tuple[int, str, int] | None = None  # the cursor last.pt holds
        # Nothing in the run directory is written before this check.
        self._checkpoint = self._accept_run_dir()
        self.threads, self._threads_from = set_threads(cfg.train.get("threads"), parallel_jobs)
        self._open_record(launch or {})
        try:
            self._build(cfg)
        except BaseException as err:
            self._record_failure(err)
            raise

    def _build(self, cfg: DictConfig) -> None:
        log.info("threads: %d (%s)", self.threads, self._threads_from)
        learner_class = get_class(cfg.method._target_)
        refuse_untaken_options(learner_class, cfg.method)
        # Fail on missing weights before any data is read.
        check_checkpoint_available(cfg.backbone)
        with config_errors():
            self.benchmark = build_benchmark(cfg.dataset, cfg.backbone.img_size, cfg.seed,
                                             mean=list(cfg.backbone.mean), std=list(cfg.backbone.std))
        # Seed before each build, so random initialisations (prompts, heads, a backbone with
        # pretrained=false) depend on the seed alone.
        seed_everything(cfg.seed)
        with config_errors():
            backbone = build_frozen_backbone(cfg.backbone)
        seed_everything(cfg.seed)
        with config_errors():
            self.learner = learner_class(cfg, backbone, self.benchmark, self.device)
        if self.learner.batchwise_prompt:
            log.warning("method.batchwise_prompt=true: each test batch uses its most frequent selection, which "
                        "leaks the batch's composition (test batches hold one task); the per-sample result is "
                        "reported too (per_sample_prompt in metrics.json)")
        self.evaluator = Evaluator(self.benchmark, self.device, cfg.eval.batch_size, cfg.train.num_workers,
                                   cache=cfg.eval.cache, progress=progress_bars(cfg.progress),
                                   max_samples=cfg.eval.max_samples_per_task)
        self.logger = instantiate(cfg.logger) if self.dist.is_main else NullLogger()

    # ---- stages ------------------------------------------------------------------------------------
    def stages(self, task: int) -> list[Stage]:
        stages = list(self.learner.stages(task))
        check_stages(stages, task)
        return stages

    def _stage_index(self, task: int, name: str) -> int:
        names = [s.name for s in self.stages(task)]
        if name not in names:
            raise ValueError(f"the checkpoint's cursor names stage {name!r} of task {task}, but "
                             f"{type(self.learner).__name__} has stages {names}")
        return names.index(name)

    # ---- checkpoints -------------------------------------------------------------------------------
    def _tick(self) -> None:
        now = time.perf_counter()
        self.wall_time += now - self._clock
        self._clock = now

    def _state(self, cursor: tuple[int, str, int], ctx: StageContext | None = None) -> dict:
        self._tick()
        return {
            "cursor": {"task": cursor[0], "stage": cursor[1], "epoch": cursor[2]},
            "learner": self.learner.state_dict(),
            "optimizer": ctx.optimizer.state_dict() if ctx is not None and ctx.optimizer is not None else None,
            "scheduler": ctx.scheduler.state_dict() if ctx is not None and ctx.scheduler is not None else None,
            "run": {"matrices": self.matrices, "tii_acc": self.tii_acc, "extra": self.extra,
                    "artifacts": self.artifacts, "evaluator": self.evaluator.state_dict(),
                    "epoch_counter": self.epoch_counter, "wall_time": self.wall_time,
                    "logger_run_id": self.logger.run_id},
            "config": self.config,
        }

    def _save(self, cursor: tuple[int, str, int], ctx: StageContext | None = None) -> None:
        if self.dist.is_main:
            save_atomic(self._state(cursor, ctx), self.ckpt_dir / "last.pt")
        self._saved = cursor

    def _save_artifact(self, name: str, state: Any) -> None:
        if self.dist.is_main:
            save_atomic(state, self.ckpt_dir / f"{name}.pt")
        if name not in self.artifacts:
            self.artifacts.append(name)

    # ---- the run directory -------------------------------------------------------------------------
    def _accept_run_dir(self) -> dict | None:
        """Refuse (:class:`RunRefusedError`) a run that would change the record of the run already in the
        directory (:mod:`norga.engine.record`); checked on rank 0 before anything is written. Returns
        ``last.pt``'s state for a resume."""
        refusal, state = None, None
        if self.dist.is_main:
            try:
                state = self._check_run_dir()
            except NorgaError as err:
                refusal = err
        if self.dist.distributed:
            message = broadcast_object(None if refusal is None else str(refusal))
            if refusal is None and message is not None:
                refusal = RunRefusedError(message)
        if refusal is not None:
            raise refusal
        return state

    def _check_run_dir(self) -> dict | None:
        if not self.cfg.resume:
            record.refuse_new_run(self.run_dir)
            return None
        record.refuse_missing_last(self.run_dir)
        last = self.ckpt_dir / "last.pt"
        state = load_checkpoint(last) if last.is_file() else None
        recorded = state["config"] if state is not None else record.recorded_config(self.run_dir)
        recorded = with_protocol_defaults(recorded)  # a run recorded before protocols was protocol=hide
        record.refuse_changed_config(self.run_dir, recorded, self.config)
        return state

    def _open_record(self, launch: dict[str, str]) -> None:
        if self.dist.is_main:
            record.open_record(self.run_dir, launch, resumed=bool(record.record_files(self.run_dir)))

    def _resume(self) -> tuple[int, str, int, dict | None]:
        """Load ``last.pt`` and the artifacts it lists; returns the cursor and in-stage state."""
        path = self.ckpt_dir / "last.pt"
        state, self._checkpoint = self._checkpoint, None  # rank 0 read it when it checked the directory
        if state is None and not self.dist.is_main and path.is_file():
            state = load_checkpoint(path)
        if state is None:
            log.info("resume=true but no checkpoint in %s: starting from task 0", self.ckpt_dir)
            return 0, self.stages(0)[0].name, 0, None
        cursor = state["cursor"]
        task, stage, epoch = cursor["task"], cursor["stage"], cursor["epoch"]
        if task < self.benchmark.num_tasks:
            self._stage_index(task, stage)
        self.learner.load_state_dict(state["learner"])
        run = state["run"]
        for name in run["artifacts"]:
            self.learner.load_artifact(name, load_checkpoint(self.ckpt_dir / f"{name}.pt"))
        self.matrices, self.tii_acc, self.extra = run["matrices"], run["tii_acc"], run["extra"]
        self.artifacts = list(run["artifacts"])
        self.evaluator.load_state_dict(run["evaluator"])
        self.epoch_counter, self.wall_time = run["epoch_counter"], run["wall_time"]
        self._resume_id = run["logger_run_id"]
        self._saved = (task, stage, epoch)
        log.info("resumed from %s at task %d, stage %s, epoch %d", path, task, stage, epoch)
        in_stage = {"optimizer": state["optimizer"], "scheduler": state["scheduler"]} if epoch > 0 else None
        return task, stage, epoch, in_stage

    # ---- metrics -----------------------------------------------------------------------------------
    @property
    def acc(self) -> list[list[float]]:
        return self.matrices.get("", [])

    def metrics(self, finished: bool) -> dict:
        out: dict[str, Any] = {
            "finished": finished,
            "dataset": self.cfg.dataset.name,
            "backbone": self.cfg.backbone.name,
            "method": self.cfg.method.name,
            "gate": self.cfg.method.get("gate"),
            "bound": self.cfg.get("bound"),
            "fidelity": fidelity_of_config(self.cfg),
            "seed": self.cfg.seed,
            "num_tasks": self.benchmark.num_tasks,
            "tasks_done": len(self.acc),
            "acc_matrix": self.acc,
            **{f"acc_matrix_{tag}": rows for tag, rows in self.matrices.items() if tag},
            "tii_acc_matrix": self.tii_acc,
        }
        if self.acc:
            out.update(summarize(self.acc))
            last = self.tii_acc[-1]
            out["tii_acc"] = None if None in last else sum(last) / len(last)
            for tag, rows in self.matrices.items():
                if tag and len(rows) == len(self.acc):
                    out.update({f"{k}_{tag}": v for k, v in summarize(rows).items()})
        out.update(protocol_record(self.cfg, self.benchmark, self.acc, self.evaluator.test_count))
        if self.learner.batchwise_prompt and self.extra:
            out["per_sample_prompt"] = self.extra[-1]
        out["vit_passes"] = round(self.evaluator.vit_passes, 4)
        out["prompt_changes"] = self.evaluator.prompt_changes
        out["wall_time_s"] = round(self.wall_time, 2)
        out["config"] = self.config
        return out

    def _write_metrics(self, finished: bool, error: str | None = None) -> dict:
        if hasattr(self, "evaluator"):
            metrics = self.metrics(finished)
        else:  # stopped while building: keep what an earlier part of the run recorded
            metrics = self._metrics_so_far()
            metrics["finished"] = False
        if error:
            metrics["error"] = error
        if not self.dist.is_main:
            return metrics
        tmp = self.run_dir / ".metrics.json.tmp"
        tmp.write_text(json.dumps(metrics, indent=1))
        tmp.replace(self.run_dir / "metrics.json")
        return metrics

    def _metrics_so_far(self) -> dict:
        try:
            metrics = json.loads((self.run_dir / "metrics.json").read_text())
            if isinstance(metrics, dict):
                return metrics
        except (OSError, ValueError):
            pass
        cfg = self.cfg
        return {"finished": False, "dataset": cfg.dataset.name, "backbone": cfg.backbone.name,
                "method": cfg.method.name, "gate": cfg.method.get("gate"), "seed": cfg.seed,
                "num_tasks": cfg.dataset.num_tasks, "tasks_done": 0, "acc_matrix": [], "config": self.config}

    def _record_failure(self, err: BaseException) -> None:
        """Write why the run stopped to ``run.log`` and ``metrics.json`` (``finished: false``, ``error``); the
        app shows it on the screen. An interruption is no error: the log says what the checkpoint holds."""
        if isinstance(err, KeyboardInterrupt):
            log.warning("interrupted: %s", self._checkpoint_state())
            return
        if not isinstance(err, Exception):
            return
        text = str(err) if isinstance(err, NorgaError) else f"{type(err).__name__}: {err}"
        to_run_log(text, exc=None if isinstance(err, NorgaError) else err)
        if self.dist.is_main:
            try:
                self._write_metrics(finished=False, error=text)
            except Exception:  # noqa: BLE001 - the run's own error is the one to report
                log.exception("could not record the error in %s", self.run_dir / "metrics.json")

    def _checkpoint_state(self) -> str:
        if self._saved is None:
            return f"no checkpoint was written in {self.ckpt_dir} yet; a resume starts from task 0"
        task, stage, epoch = self._saved
        return (f"{self.ckpt_dir / 'last.pt'} holds the run up to task {task}, stage {stage}, epoch {epoch}; "
                "a resume continues from there")

    # ---- running -----------------------------------------------------------------------------------
    def _epoch_end(self, ctx: StageContext, epoch: int, values: dict) -> None:
        self.epoch_counter += 1
        self.logger.log({**{f"{ctx.stage}/{k}": v for k, v in values.items()}, "epoch": self.epoch_counter,
                         "task_id": ctx.task})
        self._save((ctx.task, ctx.stage, epoch + 1), ctx)

    def _evaluate(self, task: int, stage: Stage, point: str) -> None:
        if not self.dist.is_main:
            return  # evaluation runs on rank 0 only (its caches live there); the others wait at the barrier
        self.learner.eval_mode()
        result = self.evaluator.evaluate(self.learner, task, point=point)
        self.matrices.setdefault(stage.evaluate, []).append(result.accs)
        if stage.evaluate:
            return
        self.tii_acc.append(result.tii_accs)
        extra = {}
        if self.learner.batchwise_prompt:
            extra = {"acc": [s.acc_per_sample_prompt for s in result.tasks],
                     "tii_acc": [s.tii_acc_per_sample_prompt for s in result.tasks]}
        self.extra.append(extra)

    def _run_stage(self, task: int, stage: Stage, epoch: int, in_stage: dict | None) -> None:
        train = self.cfg.train
        ctx = StageContext(task, stage.name, seed=self.cfg.seed, start_epoch=epoch,
                           progress=progress_bars(self.cfg.progress), max_epochs=train.get("max_epochs"),
                           max_batches=train.get("max_batches"),
                           optimizer_state=(in_stage or {}).get("optimizer"),
                           scheduler_state=(in_stage or {}).get("scheduler"),
                           on_epoch_end=self._epoch_end, on_artifact=self._save_artifact)
        maybe_crash(f"{ctx.point}/start")
        if stage.is_evaluation:
            self._evaluate(task, stage, ctx.point)
        else:
            self.learner.run_stage(ctx)

    def run_task(self, task: int, stage: str | None = None, epoch: int = 0, in_stage: dict | None = None) -> None:
        """Run task ``task`` from ``stage``/``epoch`` on (restoring ``in_stage`` optimiser state), checkpoint
        after every epoch and stage, and record its rows of the accuracy matrices."""
        stages = self.stages(task)
        start = 0 if stage is None else self._stage_index(task, stage)
        for i in range(start, len(stages)):
            self._run_stage(task, stages[i], epoch, in_stage)
            epoch, in_stage = 0, None
            if i + 1 < len(stages):
                self._save((task, stages[i + 1].name, 0))
        self._finish_task(task)

    def _finish_task(self, task: int) -> None:
        barrier()
        if not self.dist.is_main:
            return
        following = self.stages(task + 1)[0].name if task + 1 < self.benchmark.num_tasks else "done"
        state = self._state((task + 1, following, 0))
        save_atomic(state, self.ckpt_dir / "last.pt")
        save_atomic(state, self.ckpt_dir / f"task_{task}.pt")
        self._saved = (task + 1, following, 0)
        metrics = self._write_metrics(finished=task == self.benchmark.num_tasks - 1)
        row = self.acc[-1]
        n = len(row)
        others = " ".join(f"({tag} {sum(rows[-1]) / n:.2f})" for tag, rows in self.matrices.items() if tag)
        tii = "" if metrics["tii_acc"] is None else f" | task id {metrics['tii_acc']:.2f}"
        log.info("task %d/%d: acc [%s] | avg %.2f %s%s | %.0fs", task + 1, self.benchmark.num_tasks,
                 " ".join(f"{a:.1f}" for a in row), sum(row) / n, others, tii, self.wall_time)
        values = {"task": task, "eval/avg_acc": metrics["final_avg_acc"],
                  **{f"eval/avg_acc_{tag}": sum(rows[-1]) / n for tag, rows in self.matrices.items() if tag},
                  **{f"eval/acc_task_{j}": a for j, a in enumerate(row)}}
        if metrics["tii_acc"] is not None:
            values["eval/tii_acc"] = metrics["tii_acc"]
        self.logger.log(values)
        self.logger.log_matrix("acc_matrix", self.acc, task)

    def run(self) -> dict:
        cfg = self.cfg
        exit_code = 1
        done = None
        try:
            task, stage, epoch, in_stage = self._resume() if cfg.resume else (0, None, 0, None)
            self.logger.start(self.config, self.run_dir, resume_id=self._resume_id)
            self._clock = time.perf_counter()
            if cfg.backbone.name == "tiny":
                log.info("backbone: the embedded tiny ViT, pre-trained on generated images "
                         "(scripts/pretrain_embedded_vit.py), for demos and tests only")
            while task < self.benchmark.num_tasks:
                self.run_task(task, stage, epoch, in_stage)
                task, stage, epoch, in_stage = task + 1, None, 0, None
            metrics = self._write_metrics(finished=True)
            if not self.dist.is_main:
                exit_code = 0
                return metrics
            summary = {k: metrics.get(k) for k in ("final_avg_acc", "cum_avg_acc", "forgetting", "tii_acc",
                                                   "final_avg_acc_pre_tap", "vit_passes", "wall_time_s")
                       if metrics.get(k) is not None}
            self.logger.summary(summary)
            tii = "" if metrics["tii_acc"] is None else f" | TII {metrics['tii_acc']:.2f}"
            done = (f"done: FA {metrics['final_avg_acc']:.2f} | CA {metrics['cum_avg_acc']:.2f} | FFM "
                    f"{metrics['forgetting']:.2f}{tii} | pooled A_B {metrics['acc_last_pooled']:.2f} Ā "
                    f"{metrics['acc_avg_pooled']:.2f} | {round(metrics['vit_passes'])} ViT passes over test sets "
                    f"| {metrics['wall_time_s']:.0f}s | {self.run_dir / 'metrics.json'}")
            exit_code = 0
            return metrics
        except BaseException as err:
            # a non-finite loss: last.pt already holds the state before the failing epoch
            self._record_failure(err)
            raise
        finally:
            self.logger.finish(exit_code)
            cleanup()
            if done is not None:
                log.info(done)  # after the logger's own last words: the run's last line


def run(cfg: DictConfig, run_dir: str | Path, launch: dict[str, str] | None = None, parallel_jobs: int = 1) -> dict:
    """Run ``cfg`` with outputs in ``run_dir``; returns the final metrics (``ContinualRun`` has the arguments)."""
    return ContinualRun(cfg, run_dir, launch, parallel_jobs).run()
