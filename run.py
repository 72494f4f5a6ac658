"""Train and evaluate a prompt-based continual learner: ``python run.py dataset=imr backbone=ibot21k``.

Data parallel: ``torchrun --nproc_per_node=N run.py ...`` (train.batch_size stays the global batch).

Errors a user can fix (norga.errors.NorgaError: config, data, checkpoints, resume refusals, a non-finite loss)
end the process with one paragraph on stderr and exit status 1, no traceback; HYDRA_FULL_ERROR=1 (or
NORGA_TRACEBACK=1) shows it. Ctrl-C says what the last checkpoint holds and how to resume.
"""

import os
import shlex
import sys
import tempfile

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from norga.config import register
from norga.errors import TRACEBACK_ENV, NorgaError, print_error, show_traceback

register()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from norga.runner import run

    hc = HydraConfig.get()
    sweep = hc.mode == RunMode.MULTIRUN
    try:
        metrics = run(cfg, hc.runtime.output_dir, launch=_launch_record(cfg), parallel_jobs=_parallel_jobs())
    except NorgaError as err:
        if show_traceback():
            raise
        print_error(str(err))
        if sweep:
            err.shown = True  # the launcher records the job as failed and goes on with the others
            raise
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(f"interrupted; to continue, run: {_resume_command(hc, sweep)}", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    return metrics.get("final_avg_acc")  # for sweepers that optimise it (only rank 0 has it)


def _launch_record(cfg: DictConfig) -> dict[str, str]:
    """What Hydra would have written to ``.hydra/`` (conf/config.yaml leaves that to the run, which writes it
    once it knows the directory may be written), and the command line."""
    hc = HydraConfig.get()
    return {"config.yaml": OmegaConf.to_yaml(cfg),
            "hydra.yaml": OmegaConf.to_yaml(HydraConfig.instance().cfg),
            "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(hc.overrides.task))),
            "command": shlex.join(["python", *sys.argv])}


def _parallel_jobs() -> int:
    """How many jobs the launcher runs at once (joblib's n_jobs; one for the others)."""
    from norga.engine.threads import SWEEP_JOBS_ENV, cpu_cores, jobs_side_by_side

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return 1
    sweep_jobs = int(os.environ.get(SWEEP_JOBS_ENV, "0")) or None
    return jobs_side_by_side(OmegaConf.select(hc, "launcher.n_jobs"), cpu_cores(), sweep_jobs)


def _resume_command(hc: DictConfig, sweep: bool) -> str:
    """The command line that continues this run (or sweep) where its checkpoints stand."""
    args = [a for a in sys.argv[1:] if not a.startswith(("resume=", "hydra.run.dir=", "hydra.sweep.dir="))]
    where = f"hydra.sweep.dir={hc.sweep.dir}" if sweep else f"hydra.run.dir={hc.runtime.output_dir}"
    return shlex.join(["python", sys.argv[0], *args, where, "resume=true"])


def cli() -> None:
    """Run the app; report what Hydra hands back as a norga error paragraph, a compact Hydra message or (for
    anything else) a traceback."""
    os.environ.setdefault(TRACEBACK_ENV, "1" if show_traceback() else "0")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; the user's choice is in TRACEBACK_ENV
    try:
        main()
    except NorgaError as err:  # a sweep's first failed job: each was shown when it failed
        if show_traceback():
            raise
        if not getattr(err, "shown", False):
            print_error(str(err))
        print_error("a job of the sweep failed (see above; each job's run.log and metrics.json hold its "
                    "error, and python -m norga.report <sweep dir> lists the failed jobs)")
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        from hydra.errors import CompactHydraException
        from omegaconf.errors import OmegaConfBaseException

        if show_traceback() or not isinstance(err, CompactHydraException):
            raise
        from norga.config import explain_compose_error

        cause = err.__cause__
        text = explain_compose_error(err) or (
            f"{err}\n{cause}" if isinstance(cause, OmegaConfBaseException) else str(err))
        print_error(text)
        sys.exit(1)


if __name__ == "__main__":
    if int(os.environ.get("RANK", "0")) > 0:
        # Under torchrun only rank 0 writes outputs; Hydra makes a run dir in every process, so the other
        # ranks get a scratch one instead of a stray folder under outputs/.
        sys.argv += [f"hydra.run.dir={tempfile.mkdtemp(prefix='norga-rank')}", "hydra.output_subdir=null"]
    cli()
