"""The errors a user can cause and fix, and how they reach the screen.

Every such error derives from :class:`NorgaError`. Its message is one paragraph: what is wrong, where, and
how to fix it. The app (``run.py``) prints that paragraph without a traceback, writes it to the run's
``run.log`` and ``metrics.json`` when the run has a directory, and exits non-zero; ``HYDRA_FULL_ERROR=1``
(or ``NORGA_TRACEBACK=1``) shows the traceback as well.

Kept free of heavy imports: the config validator and every loader import it.
"""

from __future__ import annotations

import os
import sys

# The app sets HYDRA_FULL_ERROR itself (so that Hydra hands every exception over instead of printing it);
# what the user asked for is kept here, for this process and the job processes it starts.
TRACEBACK_ENV = "NORGA_TRACEBACK"


class NorgaError(Exception):
    """An error the user can fix; ``str(err)`` is the whole message, shown without a traceback."""


class ConfigError(NorgaError, ValueError):
    """A composed config asks for something meaningless or impossible (a value out of range, an unknown
    key, an option that does not exist, settings a method cannot combine)."""


class RunRefusedError(NorgaError):
    """A run directory already holds a run that this command would change; nothing in it was touched."""


def show_traceback() -> bool:
    """Whether the user asked for tracebacks (``HYDRA_FULL_ERROR=1`` or ``NORGA_TRACEBACK=1``)."""
    value = os.environ.get(TRACEBACK_ENV)
    if value is None:
        value = os.environ.get("HYDRA_FULL_ERROR", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def print_error(message: str) -> None:
    """``message`` on stderr as the error paragraph the user reads."""
    sys.stderr.flush()
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
