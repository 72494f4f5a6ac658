"""Shared test set-up: slow tests are opt-in (``--runslow``); Hydra's global state is cleared per test.

Under pytest-xdist (``make test`` runs ``-n auto``) every worker and the processes its tests start use one
intra-op thread: two workers of two threads each on two cores run many times slower than one (OpenMP threads
spin), and the suite's numbers are the same with one thread (tests/test_golden.py holds them). Tests that share
a ``reference_run`` of a method are kept on one worker, so each reference run is computed once.
"""

import os
import sys

import pytest

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_MODE", "offline")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "reference_run" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("xdist_group"):
            params = item.callspec.params if hasattr(item, "callspec") else {}
            item.add_marker(pytest.mark.xdist_group(f"reference_{params.get('method', 'norga')}"))
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _clear_hydra():
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


@pytest.fixture(autouse=True)
def _stop_wandb_service():
    """A W&B run in the test process leaves its service address in WANDB_SERVICE; subprocesses started by
    later tests would inherit it and talk to that service instead of their own."""
    yield
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
    os.environ.pop("WANDB_SERVICE", None)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """``reference_run(method) -> (run_dir, metrics)``: the learning fixture (``tests/learning.py``) run once per
    session and method, uninterrupted, in this process; shared by the tests that compare against it (golden
    metrics, resume, data parallel, the contract). Read it, never write into its directory."""
    from norga.engine.run import ContinualRun
    from tests.learning import compose_cfg

    runs: dict[str, tuple] = {}

    def get(method: str = "norga", with_run: bool = False):
        """``with_run=True`` adds the finished :class:`ContinualRun` itself (read it, never train it further)."""
        if method not in runs:
            run_dir = tmp_path_factory.mktemp(f"reference_{method}")
            run = ContinualRun(compose_cfg([f"method={method}"]), run_dir)
            runs[method] = run_dir, run.run(), run
        run_dir, metrics, run = runs[method]
        return (run_dir, metrics, run) if with_run else (run_dir, metrics)

    return get
