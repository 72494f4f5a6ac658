"""FA / CA / FFM on hand-computed accuracy matrices."""

import pytest

from norga.metrics import (
    average_accuracy_curve,
    cumulative_average_accuracy,
    final_average_accuracy,
    forgetting,
    summarize,
)

# A[i][j]: accuracy on task j after training task i.
THREE = [
    [90.0],
    [80.0, 85.0],
    [70.0, 75.0, 95.0],
]
# By hand:
#   FA  = (70 + 75 + 95) / 3                          = 240 / 3   = 80.0
#   row means: 90, (80 + 85) / 2 = 82.5, 80
#   CA  = (90 + 82.5 + 80) / 3                        = 252.5 / 3 = 84.1666...
#   FFM = ((max(90, 80, 70) - 70) + (max(85, 75) - 75)) / 2 = (20 + 10) / 2 = 15.0


def test_three_tasks_by_hand():
    assert final_average_accuracy(THREE) == pytest.approx(80.0)
    assert cumulative_average_accuracy(THREE) == pytest.approx(252.5 / 3)
    assert forgetting(THREE) == pytest.approx(15.0)
    expected = {"final_avg_acc": 80.0, "cum_avg_acc": 252.5 / 3, "forgetting": 15.0}
    assert summarize(THREE) == pytest.approx(expected)
    assert average_accuracy_curve(THREE) == pytest.approx([90.0, 82.5, 80.0])


def test_single_task():
    assert summarize([[97.5]]) == {"final_avg_acc": 97.5, "cum_avg_acc": 97.5, "forgetting": 0.0}


def test_forgetting_max_in_a_middle_row():
    # task 0 peaks after task 1 (backward transfer), then drops:
    #   task 0: max(50, 60, 55) - 55 = 5;  task 1: max(80, 70) - 70 = 10;  FFM = (5 + 10) / 2 = 7.5
    acc = [[50.0], [60.0, 80.0], [55.0, 70.0, 90.0]]
    assert forgetting(acc) == pytest.approx(7.5)


def test_forgetting_includes_the_last_row():
    # every old task is at its best at the end: no forgetting, not a negative number
    acc = [[50.0], [60.0, 80.0], [65.0, 85.0, 90.0]]
    assert forgetting(acc) == 0.0


def test_partial_run_uses_the_rows_present():
    # first two rows of THREE: FA = 82.5, CA = (90 + 82.5) / 2 = 86.25, FFM = 90 - 80 = 10
    expected = {"final_avg_acc": 82.5, "cum_avg_acc": 86.25, "forgetting": 10.0}
    assert summarize(THREE[:2]) == pytest.approx(expected)


def test_square_matrix_is_cut_to_the_lower_triangle():
    square = [[90.0, 1.0, 1.0], [80.0, 85.0, 1.0], [70.0, 75.0, 95.0]]
    assert summarize(square) == pytest.approx(summarize(THREE))


def test_results_are_plain_floats():
    assert all(type(v) is float for v in summarize(THREE).values())


@pytest.mark.parametrize("bad", [[], [[90.0], [80.0]]])
def test_rejects_empty_or_short_rows(bad):
    with pytest.raises(ValueError):
        summarize(bad)
