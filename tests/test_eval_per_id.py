"""Learners that run the ViT once per adapter (``features_per_id``: EASE, MOS, TUNA) have each adapter's
features of a test set computed once while the adapter is frozen, so a run costs O(T) passes over each test set,
not O(T^2); an adapter that is still changing is recomputed, never reused stale; cached equals batch by batch."""

import pytest
import torch

from norga.engine.evaluate import Evaluator
from norga.engine.run import ContinualRun
from tests.learning import compose_cfg


class PerAdapter:
    """A learner in the evaluator's contract: adapter ``i`` maps an image to ``(i + 1) * scale[i] * pixels``;
    the selection is every adapter trained so far, the logits read the last adapter's block."""

    features_per_id = True
    features_need_images = True
    eval_cacheable = True
    batchwise_prompt = False
    ordered_selection = False

    def __init__(self, num_tasks: int) -> None:
        self.scale = torch.ones(num_tasks)
        self.calls: list[int] = []

    def query(self, x):
        return x.flatten(1)[:, :4]

    def query_version(self):
        return "frozen"

    def select(self, query, upto_task):
        return torch.arange(upto_task + 1).expand(len(query), -1)

    def features(self, x, selection, query):
        assert selection.shape[1] == 1, "a per-id learner is asked for one id at a time"
        i = int(selection[0, 0])
        self.calls.append(len(x))
        return (i + 1) * float(self.scale[i]) * x.flatten(1)[:, :10]

    def features_version(self, selection):
        (i,) = selection
        return float(self.scale[i])

    def logits(self, features, upto_task):
        return features[:, -10:]

    def selected_task(self, selection):
        return None


@pytest.fixture
def run(tmp_path):
    return ContinualRun(compose_cfg(["method=simplecil", "dataset.num_tasks=5"]), tmp_path)


def evaluator(run, cache=True, batch=16):
    return Evaluator(run.benchmark, run.device, batch, cache=cache, progress=False, max_samples=20)


def test_a_frozen_adapter_is_run_once_per_test_set(run):
    learner, ev = PerAdapter(5), evaluator(run)
    for t in range(5):
        ev.evaluate(learner, t)
    # queries once per test set (5) + each adapter i once over each test set 0..4 it is evaluated on
    # (test set s meets adapters 0..4 from s on): the quadratic count would be sum_t (t+1)^2 = 55
    assert ev.vit_passes == pytest.approx(5 + 25)


def test_a_changing_adapter_is_recomputed_not_reused(run):
    learner, ev = PerAdapter(2), evaluator(run)
    ev.evaluate(learner, 1)
    before = ev.evaluate(learner, 1).tasks[0].predictions
    learner.scale[1] = -1.0  # adapter 1 trains on: its version changes
    after = ev.evaluate(learner, 1)
    direct = evaluator(run, cache=False).evaluate(learner, 1)
    assert after.accs == direct.accs
    assert torch.equal(after.tasks[0].predictions, direct.tasks[0].predictions)
    assert not torch.equal(after.tasks[0].predictions, before)


@pytest.mark.parametrize("batch", [1, 7])
def test_cached_features_equal_batch_by_batch(run, batch):
    learner = PerAdapter(3)
    learner.scale = torch.tensor([1.0, -2.0, 0.5])
    cached, direct = evaluator(run, batch=batch), evaluator(run, cache=False, batch=batch)
    for t in range(3):
        a, b = cached.evaluate(learner, t), direct.evaluate(learner, t)
        assert a.accs == b.accs
        for x, y in zip(a.tasks, b.tasks, strict=True):
            assert torch.equal(x.predictions, y.predictions)
