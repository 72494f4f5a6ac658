"""The run driver: builds everything from the config, runs any learner task by task and stage by stage,
evaluates, writes checkpoints and ``metrics.json``, and logs. It knows no method: the learner contract (the
methods package's base module) is all it uses, and it imports no method and no config schema.

A run directory is an append-only record of one run. A command that would change another run's record (no
``resume=true`` in a directory that holds a run; a resume whose config differs in keys that change results)
is refused before anything in the directory is written. A resumed run keeps the original ``.hydra/`` and
adds a line to ``resumes.log``. A run that fails writes its error to ``run.log`` and to ``metrics.json``
(``finished: false``, ``error``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from norga.data import build_benchmark
from norga.engine.checkpointing import Checkpointer, Cursor, RunClock
from norga.engine.distributed import barrier, broadcast_object, cleanup, init_distributed
from norga.engine.evaluate import Evaluator
from norga.engine.faults import maybe_crash
from norga.engine.logging import NullLogger, progress_bars
from norga.engine.metrics_file import MetricsFile
from norga.engine.options import refuse_untaken_options
from norga.engine.protocol_record import protocol_record
from norga.engine.results import RunResults
from norga.engine.run_dir import accept_run_dir, open_record
from norga.engine.seeding import seed_everything
from norga.engine.stages import Stage, StageContext, check_stages
from norga.engine.threads import set_threads
from norga.errors import ConfigError, NorgaError
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
    """One run: any learner trained task by task on a benchmark, stage by stage, with the evaluations its
    stages ask for. The run directory is admitted (:mod:`norga.engine.run_dir`), checkpoints are written and
    read by a :class:`~norga.engine.checkpointing.Checkpointer`, results are kept by
    :class:`~norga.engine.results.RunResults` and written by :class:`~norga.engine.metrics_file.MetricsFile`;
    this class builds the run and schedules the stages and evaluations.
    The config is taken as composed: :func:`norga.runner.run` checks it against its schemas first."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path, launch: dict[str, str] | None = None,
                 parallel_jobs: int = 1) -> None:
        """``launch``: how the run was launched, written once to the run directory: ``.hydra/<name>`` for
        each name ending in ``.yaml`` (the app passes Hydra's config.yaml, hydra.yaml, overrides.yaml), and
        ``command``, the line a resume records. ``parallel_jobs``: the jobs running beside this one, for the
        share of the CPU cores it takes (:mod:`norga.engine.threads`)."""
        self.cfg = cfg
        self.run_dir = Path(run_dir)
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
        self.checkpoints = Checkpointer(self.ckpt_dir, self.dist.is_main)
        self.metrics_file = MetricsFile(self.run_dir, cfg, self.config, self.dist.is_main)
        self.clock = RunClock()
        self.epoch_counter = 0
        self._resume_id: str | None = None
        # Nothing in the run directory is written before this check.
        self._checkpoint = accept_run_dir(self.run_dir, bool(cfg.resume), self.config, self.dist)
        self.threads, self._threads_from = set_threads(cfg.train.get("threads"), parallel_jobs)
        open_record(self.run_dir, launch or {}, self.dist.is_main)
        try:
            self._build(cfg)
        except BaseException as err:
            self._record_failure(err, refused=True)  # nothing ran: the report counts it apart
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
        self.results = RunResults(self.learner.batchwise_prompt)
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
    def _state(self, cursor: Cursor, ctx: StageContext | None = None) -> dict:
        """What ``last.pt`` holds at ``cursor`` (``ctx``: the stage whose optimiser state it keeps)."""
        wall_time = self.clock.tick()
        return {
            "cursor": {"task": cursor[0], "stage": cursor[1], "epoch": cursor[2]},
            "learner": self.learner.state_dict(),
            "optimizer": ctx.optimizer.state_dict() if ctx is not None and ctx.optimizer is not None else None,
            "scheduler": ctx.scheduler.state_dict() if ctx is not None and ctx.scheduler is not None else None,
            "run": {**self.results.state_dict(), "artifacts": self.checkpoints.artifacts,
                    "evaluator": self.evaluator.state_dict(), "epoch_counter": self.epoch_counter,
                    "wall_time": wall_time, "logger_run_id": self.logger.run_id},
            "config": self.config,
        }

    def _save(self, cursor: Cursor, ctx: StageContext | None = None) -> None:
        self.checkpoints.save(self._state(cursor, ctx) if self.dist.is_main else {}, cursor)

    def _resume(self) -> tuple[int, str, int, dict | None]:
        """Load ``last.pt`` and the artifacts it lists; returns the cursor and in-stage state."""
        state = self.checkpoints.load_last(self._checkpoint)  # rank 0 read it when it checked the directory
        self._checkpoint = None
        if state is None:
            log.info("resume=true but no checkpoint in %s: starting from task 1", self.ckpt_dir)
            return 0, self.stages(0)[0].name, 0, None
        cursor = state["cursor"]
        task, stage, epoch = cursor["task"], cursor["stage"], cursor["epoch"]
        if task < self.benchmark.num_tasks:
            self._stage_index(task, stage)
        self.learner.load_state_dict(state["learner"])
        run = state["run"]
        for name, artifact in self.checkpoints.load_artifacts(run["artifacts"]):
            self.learner.load_artifact(name, artifact)
        self.results.load_state_dict(run)
        self.evaluator.load_state_dict(run["evaluator"])
        self.epoch_counter, self.clock.total = run["epoch_counter"], run["wall_time"]
        self._resume_id = run["logger_run_id"]
        self.checkpoints.saved = (task, stage, epoch)
        log.info("resumed from %s at task %d, stage %s, epoch %d", self.checkpoints.last, task + 1, stage,
                 epoch + 1)
        in_stage = {"optimizer": state["optimizer"], "scheduler": state["scheduler"]} if epoch > 0 else None
        return task, stage, epoch, in_stage

    # ---- metrics -----------------------------------------------------------------------------------
    @property
    def acc(self) -> list[list[float]]:
        return self.results.acc

    def metrics(self, finished: bool) -> dict:
        """``metrics.json`` as it stands: what was run, what was measured, counters and the config."""
        return {**self.metrics_file.description(finished), "num_tasks": self.benchmark.num_tasks,
                **self.results.metrics(),
                **protocol_record(self.cfg, self.benchmark, self.acc, self.evaluator.test_count),
                "vit_passes": round(self.evaluator.vit_passes, 4),
                "prompt_changes": self.evaluator.prompt_changes,
                "wall_time_s": round(self.clock.total, 2),
                "config": self.config}

    def _record_failure(self, err: BaseException, refused: bool = False) -> None:
        """``refused``: stopped while building, before anything ran; a user-fixable error of a new run is then
        marked ``refused: true``, which the report counts apart."""
        built = hasattr(self, "results")  # else stopped while building: keep what was recorded before
        self.metrics_file.record_failure(err, (lambda: self.metrics(False)) if built else None,
                                         self.checkpoints.describe,
                                         refused=refused and isinstance(err, NorgaError) and not self.cfg.resume)

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
        self.results.add(stage.evaluate, self.evaluator.evaluate(self.learner, task, point=point))

    def _run_stage(self, task: int, stage: Stage, epoch: int, in_stage: dict | None) -> None:
        train = self.cfg.train
        ctx = StageContext(task, stage.name, seed=self.cfg.seed, start_epoch=epoch,
                           progress=progress_bars(self.cfg.progress), max_epochs=train.get("max_epochs"),
                           max_batches=train.get("max_batches"),
                           optimizer_state=(in_stage or {}).get("optimizer"),
                           scheduler_state=(in_stage or {}).get("scheduler"),
                           on_epoch_end=self._epoch_end, on_artifact=self.checkpoints.save_artifact)
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
        cursor = (task + 1, following, 0)
        self.checkpoints.save_task(self._state(cursor), cursor, task)
        metrics = self.metrics_file.write(self.metrics(finished=task == self.benchmark.num_tasks - 1))
        log.info(self.results.task_line(task, self.benchmark.num_tasks, metrics["tii_acc"], self.clock.total))
        self.logger.log(self.results.task_values(task, metrics))
        self.logger.log_matrix("acc_matrix", self.acc, task)

    def run(self) -> dict:
        cfg = self.cfg
        exit_code = 1
        done = None
        try:
            task, stage, epoch, in_stage = self._resume() if cfg.resume else (0, None, 0, None)
            self.logger.start(self.config, self.run_dir, resume_id=self._resume_id)
            self.clock.restart()
            if cfg.backbone.get("source"):
                log.info("backbone %s: %s", cfg.backbone.name, cfg.backbone.source)
            while task < self.benchmark.num_tasks:
                self.run_task(task, stage, epoch, in_stage)
                task, stage, epoch, in_stage = task + 1, None, 0, None
            metrics = self.metrics_file.write(self.metrics(finished=True))
            if not self.dist.is_main:
                exit_code = 0
                return metrics
            self.logger.summary({k: metrics.get(k) for k in self.results.summary_keys()
                                 if metrics.get(k) is not None})
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
    """Run ``cfg`` (as composed: :func:`norga.runner.run` checks it first) with outputs in ``run_dir``; returns
    the final metrics (``ContinualRun`` has the arguments)."""
    return ContinualRun(cfg, run_dir, launch, parallel_jobs).run()
