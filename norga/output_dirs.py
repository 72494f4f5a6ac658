"""Output folders a run can write, and what to say when the file system refuses.

A run (or sweep) folder that cannot be created is a user's to fix: another ``hydra.run.dir`` (or
``hydra.sweep.dir``), the folder's permissions, free space. :func:`check_writable` finds that out before
anything is launched (the preflight calls it); :func:`explain_os_error` turns an ``OSError`` that still reaches
the app into the error paragraph. Import-light: the preflight and ``run.py`` import it before any torch.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from norga.errors import NorgaError


class OutputDirError(NorgaError):
    """A run or sweep folder cannot be created or written."""


_WHERE = {"hydra.run.dir": "hydra.run.dir=<folder>", "hydra.sweep.dir": "hydra.sweep.dir=<folder>"}


def check_writable(path: str | Path, key: str) -> None:
    """Raise :class:`OutputDirError` if ``path`` (the value of config key ``key``) can be neither written nor
    created. Probes the nearest existing folder with a temporary folder it removes at once, since permission
    bits do not tell (root ignores them; a read-only mount refuses even root)."""
    target = Path(os.path.abspath(str(path)))
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputDirError(_paragraph(target, key, f"{existing} is a file, not a folder"))
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".norga-write-test-", dir=existing))
    except OSError as err:
        raise OutputDirError(_paragraph(target, key, f"{existing} is not writable ({err.strerror})")) from None


def explain_os_error(err: OSError) -> str:
    """The error paragraph for an ``OSError`` the file system raised (permissions, a read-only mount, a full
    disk, a missing folder): what could not be done, where, and what to change."""
    where = err.filename or "a file"
    reason = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        fix = "free space on that disk, or write the run elsewhere (hydra.run.dir=<folder>)"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST):
        fix = ("choose a folder you can write (hydra.run.dir=<folder>, for a sweep hydra.sweep.dir=<folder>), or "
               "change the folder's permissions")
    else:
        fix = "check the path and the file system"
    return (f"could not write or read {where}: {reason} (errno {err.errno}). Fix: {fix}. NORGA_TRACEBACK=1 shows "
            "where it happened.")


def _paragraph(target: Path, key: str, why: str) -> str:
    return (f"the output folder {target} ({key}) cannot be created: {why}. Choose a folder you can write "
            f"({_WHERE.get(key, key + '=<folder>')}) or change its permissions. Nothing was built or written.")
