"""Learning-rate schedules (docs/algorithm.md#wtp-training-loss-and-optimiser and
docs/algorithm.md#schedules-one-epoch-lag-and-cosine-floor; CODA-Prompt's in docs/algorithm.md#training; the
first-task-only switch in docs/algorithm.md#d3-step-schedule-on-later-tasks-schedulerfirst_task_only): the
factor of each epoch from the written-out formula, and the lr the optimiser actually steps with in each epoch
of a run (recorded through short runs: one batch per epoch), restarting with every task."""

import math

import pytest
import torch

from norga.engine.logging import NullLogger
from norga.engine.optim import lr_factor, set_epoch_lr
from norga.engine.run import ContinualRun
from tests.learning import compose_cfg


def test_step_decays_at_every_multiple_of_step_epochs_and_not_before():
    schedule = {"name": "step", "step_epochs": 3, "gamma": 0.37}
    got = [lr_factor(schedule, e, 8) for e in range(8)]
    assert got == pytest.approx([1, 1, 1, 0.37, 0.37, 0.37, 0.37 ** 2, 0.37 ** 2])
    # the presets' step: 0.1 every 30 epochs, so 20 epochs never decay and epoch 30 of 50 runs at a tenth
    preset = {"name": "step", "step_epochs": 30, "gamma": 0.1}
    assert [lr_factor(preset, e, 50) for e in (0, 29, 30, 49)] == pytest.approx([1, 1, 0.1, 0.1])


def test_multistep_decays_at_each_milestone_as_torchs_multisteplr_stepped_per_epoch():
    schedule = {"name": "multistep", "milestones": [4, 6, 8], "gamma": 0.005}
    got = [lr_factor(schedule, e, 10) for e in range(10)]
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=1.0)
    torch_lrs = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[4, 6, 8], gamma=0.005)
    expected = []
    for _ in range(10):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        torch_lrs.step()
    assert got == pytest.approx(expected)
    assert got[3] == 1 and got[4] == pytest.approx(0.005) and got[9] == pytest.approx(0.005 ** 3)


def test_cosine_runs_from_lr_to_its_floor_and_coda_cosine_has_none():
    epochs, base, floor = 6, 0.8, 0.13
    opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": base, "base_lr": base}], lr=base)
    got = [set_epoch_lr(opt, {"name": "cosine", "min_lr": floor}, e, epochs) for e in range(epochs)]
    expected = [floor + (base - floor) * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    assert got == pytest.approx(expected)
    assert opt.param_groups[0]["lr"] == pytest.approx(expected[-1])
    coda = [set_epoch_lr(opt, {"name": "coda_cosine"}, e, epochs) for e in range(epochs)]
    assert coda == pytest.approx([base * math.cos(99 * math.pi * e / (200 * (epochs - 1))) for e in range(epochs)])
    assert set_epoch_lr(opt, {"name": "coda_cosine"}, 0, 1) == pytest.approx(base)  # one epoch: constant


class Recorder(NullLogger):
    def __init__(self):
        self.rows = []

    def log(self, metrics):
        self.rows.append(dict(metrics))


def lrs_of_a_run(tmp_path, monkeypatch, overrides):
    """``{(task, stage): [logged lr per epoch]}`` of a short run, and the lr of every Adam step in order."""
    stepped = []
    adam_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        stepped.append(self.param_groups[0]["lr"])
        return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    run = ContinualRun(compose_cfg([*overrides, "train.max_batches=1", "eval.max_samples_per_task=8"]), tmp_path)
    run.logger = Recorder()
    run.run()
    logged = {}
    for row in run.logger.rows:
        for key, value in row.items():
            if key.endswith("/lr"):
                logged.setdefault((row["task_id"], key[:-3]), []).append(value)
    return logged, stepped


@pytest.mark.parametrize("first_task_only", [False, True])
def test_a_step_schedule_decays_at_its_epochs_in_every_task_of_a_run(first_task_only, tmp_path, monkeypatch):
    overrides = ["method=l2p", "train.epochs=5", "scheduler=step", "scheduler.step_epochs=2", "scheduler.gamma=0.3",
                 f"scheduler.first_task_only={str(first_task_only).lower()}"]
    cfg = compose_cfg(overrides)
    base = cfg.optimizer.lr * cfg.train.batch_size / 256
    logged, stepped = lrs_of_a_run(tmp_path, monkeypatch, overrides)
    decaying = [base * f for f in (1, 1, 0.3, 0.3, 0.09)]
    expected = {(0, "train"): decaying, (1, "train"): [base] * 5 if first_task_only else decaying}
    assert logged.keys() == expected.keys()
    for key, lrs in expected.items():
        assert logged[key] == pytest.approx(lrs), key
    assert stepped == pytest.approx(expected[(0, "train")] + expected[(1, "train")]), "the lr the steps used"


def test_hide_stages_follow_their_own_schedules(tmp_path, monkeypatch):
    """TII: ``method.tii.scheduler`` (step here); WTP: ``scheduler`` (cosine to its floor); TAP: cosine to 0 over
    its epochs, from its own lr, SGD."""
    overrides = ["method=hide", "train.epochs=4", "scheduler=cosine", "scheduler.min_lr=0.0007",
                 "method.tii.epochs=3", "method.tii.scheduler.name=step", "method.tii.scheduler.step_epochs=2",
                 "method.tii.scheduler.gamma=0.3", "method.tap.epochs=3", "method.tap.lr=0.07",
                 "method.tii.tap.epochs=2", "train.max_stats_per_class=20"]
    cfg = compose_cfg(overrides)
    scale = cfg.train.batch_size / 256
    logged, stepped = lrs_of_a_run(tmp_path, monkeypatch, overrides)
    tii = [cfg.method.tii.lr * scale * f for f in (1, 1, 0.3)]
    base, floor = cfg.optimizer.lr * scale, 0.0007
    wtp = [floor + (base - floor) * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    tap = [0.07 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)]
    tii_tap = [cfg.method.tii.tap.lr * scale * (1 + math.cos(math.pi * e / 2)) / 2 for e in range(2)]
    for task in (0, 1):
        assert logged[(task, "tii_train")] == pytest.approx(tii)
        assert logged[(task, "wtp_train")] == pytest.approx(wtp)
    assert logged[(1, "wtp_tap")] == pytest.approx(tap)
    assert logged[(1, "tii_tap")] == pytest.approx(tii_tap)
    assert stepped == pytest.approx((tii + wtp) * 2), "the lr the Adam steps used"


def test_coda_cosine_is_applied_per_epoch_of_every_task(tmp_path, monkeypatch):
    overrides = ["method=coda", "train.epochs=4"]
    cfg = compose_cfg(overrides)
    assert cfg.scheduler.name == "coda_cosine"
    base = cfg.optimizer.lr * cfg.train.batch_size / 256
    logged, stepped = lrs_of_a_run(tmp_path, monkeypatch, overrides)
    expected = [base * math.cos(99 * math.pi * e / 600) for e in range(4)]
    assert logged[(0, "train")] == pytest.approx(expected) and logged[(1, "train")] == pytest.approx(expected)
    assert stepped == pytest.approx(expected * 2)
