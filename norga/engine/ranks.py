"""What the processes of a torchrun other than rank 0 do differently, outside the training itself.

* Hydra makes a run directory in every process; only rank 0 writes outputs, so the others get a scratch
  folder in the temp directory (:func:`scratch_run_dir`), removed when the process exits, also on an error or
  SIGTERM (torchrun's way of stopping the other ranks when one fails). Folders left by processes that were
  killed outright (SIGKILL) are removed by the next run's other ranks.
* The console shows every line once: rank 0's. The other ranks show only warnings and errors, marked with
  their rank (:func:`quiet_other_ranks`); their INFO lines would repeat rank 0's.

Import-light (no torch): ``run.py`` calls it before Hydra starts.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

SCRATCH_PREFIX = "norga-rank"


def rank() -> int:
    """This process's torchrun rank (0 without torchrun)."""
    return int(os.environ.get("RANK", "0") or 0)


def scratch_run_dir() -> str:
    """A fresh scratch folder for this rank's Hydra run directory, removed at exit; folders of earlier
    processes that no longer exist are removed first."""
    remove_stale_scratch()
    path = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{rank()}-{os.getpid()}-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # the default SIGTERM ends the process without running atexit: exit the Python way instead
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return path


def remove_stale_scratch(root: str | None = None) -> list[Path]:
    """Remove the scratch folders in ``root`` (the temp directory) whose process is gone; returns them."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*-*"):
        parts = path.name[len(SCRATCH_PREFIX):].split("-")
        if len(parts) < 3 or not parts[1].isdigit() or _alive(int(parts[1])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class _RankPrefix(logging.Filter):
    def __init__(self, number: int) -> None:
        super().__init__()
        self.prefix = f"[rank {number}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            record.msg = self.prefix + str(record.msg)
        return True


def quiet_other_ranks() -> None:
    """On a rank other than 0: the console handlers of the root logger pass warnings and errors only, each
    marked with the rank. Rank 0 (and a single process) is left as it is."""
    number = rank()
    if number == 0:
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(max(handler.level, logging.WARNING))
            if not any(isinstance(f, _RankPrefix) for f in handler.filters):
                handler.addFilter(_RankPrefix(number))
