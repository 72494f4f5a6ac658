"""Stages and seeding: the stage names of the first release keep their seeds (so HiDe-Prompt and NoRGa
results did not move when learners started naming their own stages), new names get stable seeds of their
own, and a learner's stage list is checked before a run uses it."""

import pytest

from norga.engine.seeding import stage_seed
from norga.engine.stages import Stage, check_stages, evaluation


@pytest.mark.parametrize(("seed", "task", "stage", "epoch", "expected"), [
    # SeedSequence([seed, task, index in (tii_train, tii_stats, tii_tap, wtp_train, wtp_stats, wtp_tap,
    # evaluate), epoch]) & 0x7FFFFFFF, as computed by the first release
    (42, 1, "wtp_train", 3, 14890946),
    (40, 0, "tii_train", 0, 601695934),
    (44, 2, "evaluate", 0, 1955402401),
])
def test_legacy_stage_names_keep_their_seeds(seed, task, stage, epoch, expected):
    assert stage_seed(seed, task, stage, epoch) == expected


def test_new_stage_names_get_stable_distinct_seeds():
    # stable across processes and Python versions (no use of hash()): pinned values
    assert (stage_seed(42, 0, "train", 0), stage_seed(42, 0, "train", 1)) == (839430595, 162481063)
    seeds = {stage_seed(42, 0, name) for name in ("train", "adapt", "prototypes", "tii_train", "wtp_train")}
    assert len(seeds) == 5
    with pytest.raises(ValueError, match="name"):
        stage_seed(42, 0, "")


def test_stage_lists_are_checked():
    check_stages([Stage("train"), evaluation()], 0)
    check_stages([Stage("a"), evaluation("pre", tag="before"), Stage("b"), evaluation()], 3)
    with pytest.raises(ValueError, match="unique"):
        check_stages([Stage("a"), Stage("a"), evaluation()], 0)
    with pytest.raises(ValueError, match="end with the task's evaluation"):
        check_stages([evaluation(), Stage("train")], 0)
    with pytest.raises(ValueError, match="end with the task's evaluation"):
        check_stages([Stage("train")], 0)
