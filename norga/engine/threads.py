"""Intra-op threads: each process takes its share of the CPU cores.

torch starts as many threads as the machine has cores; two jobs side by side on 2 cores then run 4 threads
that preempt each other mid-operation, up to 16x slower than one job alone. A process's share is the cores
it may use divided by the processes that run beside it: the jobs a launcher runs at once (joblib's
``n_jobs``, at most the sweep's job count) times the processes of a torchrun on this node.
``train.threads`` sets the count instead; so does ``OMP_NUM_THREADS`` in the environment when
``train.threads`` is unset (cluster scripts and test runners set it for the processes they place).
"""

from __future__ import annotations

import os

# The number of jobs in the sweep being launched (set by norga.preflight before the launcher starts them).
SWEEP_JOBS_ENV = "NORGA_SWEEP_JOBS"


def cpu_cores() -> int:
    """The cores this process may run on (its affinity: a SLURM allocation, taskset), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def jobs_side_by_side(n_jobs: int | None, cores: int, sweep_jobs: int | None = None) -> int:
    """How many jobs a launcher with ``n_jobs`` runs at once: joblib counts -1 as every core, -2 as all but
    one, and so on; None is one job at a time. Never more than the sweep's ``sweep_jobs``."""
    if not n_jobs:
        jobs = 1
    elif n_jobs < 0:
        jobs = max(1, cores + 1 + n_jobs)
    else:
        jobs = n_jobs
    return max(1, min(jobs, sweep_jobs) if sweep_jobs else jobs)


def thread_share(cores: int, side_by_side: int) -> int:
    """Threads for one of ``side_by_side`` processes sharing ``cores``: at least one."""
    return max(1, cores // max(1, side_by_side))


def environment_threads() -> int | None:
    """``OMP_NUM_THREADS`` when it is set to a positive integer, else None."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def choose_threads(configured: int | None, side_by_side: int = 1) -> tuple[int, str]:
    """``(count, why)``: ``configured`` (``train.threads``), else ``OMP_NUM_THREADS``, else this process's
    share of the cores. ``side_by_side`` counts the jobs a launcher runs at once; the processes of a torchrun
    on this node (``LOCAL_WORLD_SIZE``) are counted here."""
    if configured:
        return configured, "train.threads"
    from_env = environment_threads()
    if from_env:
        return from_env, "OMP_NUM_THREADS"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return thread_share(cpu_cores(), side_by_side * local), "auto, its share of the cores"


def set_threads(configured: int | None, side_by_side: int = 1) -> tuple[int, str]:
    """Set torch's intra-op threads as :func:`choose_threads` says; returns ``(count, why)``."""
    import torch

    threads, why = choose_threads(configured, side_by_side)
    torch.set_num_threads(threads)
    return threads, why
