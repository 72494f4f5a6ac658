"""The errors a loader raises when its files are not where it expects them, or not what it expects."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from norga.errors import NorgaError

ROOT_HINT = (
    "Point norga at the folder that holds it with dataset.root=/path/to/data "
    "(or paths.data_dir=/path/to/data, or the NORGA_DATA_DIR environment variable)."
)


class DatasetNotFoundError(FileNotFoundError, NorgaError):
    """A dataset's files are missing under ``root``; the message says what to put where."""


def dataset_not_found(
    name: str,
    root: str | os.PathLike,
    expected: str | os.PathLike,
    tree: str,
    url: str,
    missing: Iterable[str] = (),
    torchvision_download: bool = False,
) -> DatasetNotFoundError:
    """Build (not raise) the error for a missing dataset.

    ``tree`` is a short layout sketch relative to ``root``; ``missing`` lists the files not found;
    ``torchvision_download`` says whether ``dataset.source.download=true`` can fetch it.
    """
    missing = list(missing)
    lines = [f"{name} not found: expected {os.fspath(expected)}"]
    if missing:
        shown = ", ".join(missing[:6]) + (f", ... ({len(missing)} in all)" if len(missing) > 6 else "")
        lines.append(f"Missing: {shown}")
    lines.append(f"Expected layout under root={os.fspath(root)}:")
    lines.extend("  " + line for line in tree.strip("\n").splitlines())
    lines.append(f"The files come from {url}")
    if torchvision_download:
        lines.append("Or let torchvision download and verify them with dataset.source.download=true.")
    else:
        lines.append("There is no automatic download for it: fetch it by hand and unpack it as shown.")
    lines.append(ROOT_HINT)
    return DatasetNotFoundError("\n".join(lines))


class DatasetFileError(ValueError, NorgaError):
    """A dataset file is there but does not hold what its loader expects; the message names the file, what
    was expected and what was found."""

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        super().__init__(message)  # the message alone in args: the error survives pickling (data workers)
        self.path = os.fspath(path) if path is not None else None


def _describe(problem: str | BaseException, path: str) -> str:
    if isinstance(problem, str):
        return problem
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return "the file is empty (0 bytes)"
    first = next((line.strip() for line in str(problem).splitlines() if line.strip()), "")
    return f"{type(problem).__name__}: {first[:200]}" if first else type(problem).__name__


def dataset_file_error(
    name: str, path: str | os.PathLike, expected: str, problem: str | BaseException, source: str = ""
) -> DatasetFileError:
    """Build (not raise) the error for a dataset file that cannot be read as ``expected``.

    ``problem`` says what is wrong (an exception: its type and first line); ``source`` is where an intact
    copy comes from.
    """
    path = os.fspath(path)
    origin = f": {source}" if source else ""
    return DatasetFileError(
        f"{name}: cannot read {path}: {_describe(problem, path)}.\n"
        f"  Expected {expected}.\n"
        f"  The file is damaged or not the dataset's own; replace it with the one from the original "
        f"archive{origin}",
        path,
    )


def combine(errors: Sequence[DatasetNotFoundError]) -> DatasetNotFoundError:
    """One error carrying the messages of several missing datasets."""
    if len(errors) == 1:
        return errors[0]
    # Say where to point norga once, after all the datasets' own messages.
    body = "\n\n".join(str(e).replace("\n" + ROOT_HINT, "") for e in errors)
    return DatasetNotFoundError(f"{len(errors)} datasets not found:\n\n{body}\n\n{ROOT_HINT}")
