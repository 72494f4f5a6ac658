"""Each job takes its share of the CPU cores: two jobs of 2 threads on 2 cores ran up to 16x slower than one,
and the joblib launcher ran jobs side by side with torch's default thread count (one per core)."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from norga.config import register
from norga.engine.threads import choose_threads, cpu_cores, jobs_side_by_side, thread_share

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["logger=none", "device=cpu", "progress=false", "backbone.pretrained=false", "dataset.num_tasks=2",
         "method.prompt_length=2", "method.prompt_layers=[0,1]"]


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("n_jobs", "cores", "sweep_jobs", "expected"), [
    (None, 16, None, 1),   # basic launcher: one job at a time
    (2, 2, None, 2),       # hydra.launcher.n_jobs=2
    (-1, 16, None, 16),    # joblib's default: one job per core
    (-1, 16, 3, 3),        # ... but a sweep of 3 jobs runs 3
    (-2, 16, None, 15),    # all cores but one
    (8, 4, None, 8),
])
def test_jobs_side_by_side_counts_like_joblib(n_jobs, cores, sweep_jobs, expected):
    assert jobs_side_by_side(n_jobs, cores, sweep_jobs) == expected


@pytest.mark.parametrize(("cores", "side_by_side", "expected"), [(2, 1, 2), (2, 2, 1), (16, 3, 5), (2, 8, 1)])
def test_thread_share(cores, side_by_side, expected):
    assert thread_share(cores, side_by_side) == expected


def compose_cfg(overrides, hydra=False):
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=hydra)


def test_a_joblib_job_takes_its_share_of_the_cores(tmp_path, keep_threads, monkeypatch):
    """``python run.py -m seed=40,42 hydra/launcher=joblib hydra.launcher.n_jobs=2``: each job's threads."""
    import run as app
    from norga.engine.run import ContinualRun

    monkeypatch.delenv("NORGA_SWEEP_JOBS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    sweep = ["seed=40", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.mode=MULTIRUN"]
    HydraConfig.instance().set_config(compose_cfg([*SMALL, *sweep], hydra=True))
    try:
        jobs = app._parallel_jobs()
    finally:
        HydraConfig.instance().cfg = None
    assert jobs == 2
    run = ContinualRun(compose_cfg([*SMALL, "seed=40"]), tmp_path, parallel_jobs=jobs)
    assert run.threads == torch.get_num_threads() == max(1, cpu_cores() // 2)


def test_train_threads_sets_the_count(tmp_path, keep_threads, monkeypatch):
    from norga.engine.run import ContinualRun

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    cfg = compose_cfg([*SMALL, "train.threads=1"])
    assert ContinualRun(cfg, tmp_path, parallel_jobs=8).threads == torch.get_num_threads() == 1


@pytest.mark.parametrize(("value", "expected"), [("3", 3), ("1", 1), ("", None), ("0", None), ("two", None)])
def test_omp_num_threads_sets_the_count_when_train_threads_is_unset(value, expected, monkeypatch):
    """A cluster script's or test runner's OMP_NUM_THREADS wins over the share; a value that is not a positive
    count is ignored."""
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    threads, why = choose_threads(None, side_by_side=1)
    if expected is None:
        assert (threads, why) == (cpu_cores(), "auto, its share of the cores")
    else:
        assert (threads, why) == (expected, "OMP_NUM_THREADS")
    assert choose_threads(2, side_by_side=1) == (2, "train.threads")
