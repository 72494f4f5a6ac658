"""Crash drills: kill the process at a named point of a run, to test that resuming is exact.

Set ``NORGA_CRASH_AT`` to a point name (e.g. ``task1/wtp_train/epoch0/step2``, ``task1/wtp_tap/epoch3``,
``task1/wtp_train/start``, ``task1/evaluate/test0``, ``checkpoint/last.pt``) and the process SIGKILLs
itself when it gets there, as a pre-empted cluster job would die. A pattern with ``*`` (``fnmatch``; ``*`` also
matches ``/``) kills at the first point that matches: ``task1/*/step1`` is the second step of the first
trained stage of task 1, whatever the learner calls its stages. Alternatives separated by ``|`` kill at the
first point that matches any of them (``task1/*/epoch1/step1|task1/*/test0``: mid-training where task 1
trains, else in its evaluation). Unset, this costs one dict lookup.
"""

from __future__ import annotations

import fnmatch
import os
import signal

ENV = "NORGA_CRASH_AT"


def maybe_crash(point: str) -> None:
    """SIGKILL this process if ``point`` is the configured crash point."""
    target = os.environ.get(ENV)
    if target is not None and any(_matches(point, pattern) for pattern in target.split("|")):
        os.kill(os.getpid(), signal.SIGKILL)


def _matches(point: str, pattern: str) -> bool:
    return pattern == point or ("*" in pattern and fnmatch.fnmatchcase(point, pattern))
