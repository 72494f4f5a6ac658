"""Results do not move when code moves: the learning fixture (and, with --runslow, the embedded default
``python run.py method=<m>``) gives exactly the metrics stored in ``tests/golden/`` before the engine was
generalised to any learner. Every field is compared except the config (whose layout may change) and the wall
time. A change that is meant to move results must regenerate these files and say why in its commit."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from norga.config import register
from norga.engine.run import ContinualRun
from tests.learning import CONF

GOLDEN = Path(__file__).parent / "golden"


def assert_matches_golden(metrics: dict, name: str) -> None:
    golden = json.loads((GOLDEN / name).read_text())
    golden.pop("command")
    differing = {k: (v, metrics.get(k)) for k, v in golden.items() if metrics.get(k) != v}
    assert not differing, f"differs from tests/golden/{name}: {differing}"


@pytest.mark.parametrize("method", ["norga", "hide"])
def test_learning_fixture_matches_golden(method, reference_run):
    _, metrics = reference_run(method)
    assert_matches_golden(metrics, f"{method}_learning_fixture.json")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["norga", "hide"])
def test_embedded_default_matches_golden(method, tmp_path):
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"method={method}", "logger=none", "progress=false"])
    assert_matches_golden(ContinualRun(cfg, tmp_path).run(), f"{method}_digits_tiny_seed42.json")
