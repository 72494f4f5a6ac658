"""Pooled and task-mean accuracies from the accuracy matrix and the test images per task, on tasks of
unequal size (where they differ), against values computed by hand."""

import pytest

from norga.engine.protocol_record import run_label
from norga.metrics.pooled import four_accuracies, pooled_curve

# 3 tasks with 100, 50 and 10 test images; row i = accuracies on tasks 0..i after task i (percent)
ACC = [[90.0], [80.0, 60.0], [70.0, 40.0, 20.0]]
COUNTS = [100, 50, 10]


def test_pooled_weights_each_task_by_its_test_images():
    # after task 1: (80 * 100 + 60 * 50) / 150 = 11000 / 150; after task 2: (7000 + 2000 + 200) / 160 = 57.5
    assert pooled_curve(ACC, COUNTS) == pytest.approx([90.0, 11000 / 150, 57.5])
    four = four_accuracies(ACC, COUNTS)
    assert four["acc_last_pooled"] == pytest.approx(57.5)
    assert four["acc_avg_pooled"] == pytest.approx((90.0 + 11000 / 150 + 57.5) / 3)
    assert four["acc_last_taskmean"] == pytest.approx(130 / 3)  # (70 + 40 + 20) / 3: HiDe's FA
    assert four["acc_avg_taskmean"] == pytest.approx((90.0 + 70.0 + 130 / 3) / 3)  # HiDe's CA


def test_equal_tasks_make_pooled_and_taskmean_agree():
    four = four_accuracies(ACC, [30, 30, 30])
    assert four["acc_last_pooled"] == pytest.approx(four["acc_last_taskmean"])
    assert four["acc_avg_pooled"] == pytest.approx(four["acc_avg_taskmean"])


def test_counts_must_cover_the_tasks():
    with pytest.raises(ValueError, match="2 test counts for 3 tasks"):
        pooled_curve(ACC, [1, 2])


def test_run_label_names_every_axis():
    assert run_label("imagenet_a", "pilot-zip", "np-seed-1993", "B0Inc20", "augreg_in21k", "pilot") == (
        "imagenet_a/pilot-zip/np-seed-1993/B0Inc20/augreg_in21k/pilot")
