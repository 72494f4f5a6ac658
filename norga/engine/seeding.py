"""Deterministic seeding per (run seed, task, stage, epoch).

Every epoch of every stage re-seeds Python, NumPy and torch from its own coordinates, so the randomness of
a stage never depends on what ran before it: a resumed run, or a run whose stages are reordered, draws the
same numbers.
"""

from __future__ import annotations

import random

import numpy as np
import torch

STAGES = ("tii_train", "tii_stats", "tii_tap", "wtp_train", "wtp_stats", "wtp_tap", "evaluate")


def stage_seed(seed: int, task: int, stage: str, epoch: int = 0) -> int:
    """A 31-bit seed derived from the run seed and the position in the run."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    seq = np.random.SeedSequence([seed, task, STAGES.index(stage), epoch])
    return int(seq.generate_state(1)[0] & 0x7FFFFFFF)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_stage(seed: int, task: int, stage: str, epoch: int = 0) -> torch.Generator:
    """Seed all global RNGs for this point of the run; returns a generator for data-loader shuffling."""
    s = stage_seed(seed, task, stage, epoch)
    seed_everything(s)
    return torch.Generator().manual_seed(s)
