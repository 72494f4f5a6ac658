"""Deterministic seeding per (run seed, task, stage, epoch).

Every epoch of every stage re-seeds Python, NumPy and torch from its own coordinates, so the randomness of
a stage never depends on what ran before it: a resumed run, or a run whose stages are reordered, draws the
same numbers. Stages are named by their learner; a name is turned into a number by :func:`stage_key`.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

# The stage names of the first release keep the numbers they had then (their position in this tuple), so
# runs of the learners that use them draw exactly what they drew before learners named their own stages.
LEGACY_STAGES = ("tii_train", "tii_stats", "tii_tap", "wtp_train", "wtp_stats", "wtp_tap", "evaluate")


def stage_key(stage: str) -> int:
    """The number that stands for a stage name in the seed: its legacy index, or else 2**32 plus the first
    four bytes of the name's SHA-256 (stable across processes and Python versions, unlike ``hash``)."""
    if not stage or not isinstance(stage, str):
        raise ValueError(f"a stage needs a non-empty name, got {stage!r}")
    if stage in LEGACY_STAGES:
        return LEGACY_STAGES.index(stage)
    return 2**32 + int.from_bytes(hashlib.sha256(stage.encode()).digest()[:4], "little")


def stage_seed(seed: int, task: int, stage: str, epoch: int = 0) -> int:
    """A 31-bit seed derived from the run seed and the position in the run."""
    seq = np.random.SeedSequence([seed, task, stage_key(stage), epoch])
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
