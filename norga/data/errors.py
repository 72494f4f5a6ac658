"""The error a loader raises when its files are not where it expects them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

ROOT_HINT = (
    "Point norga at the folder that holds it with dataset.root=/path/to/data "
    "(or paths.data_dir=/path/to/data, or the NORGA_DATA_DIR environment variable)."
)


class DatasetNotFoundError(FileNotFoundError):
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
    ``torchvision_download`` says whether ``dataset.download=true`` can fetch it.
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
        lines.append("Or let torchvision download and verify them with dataset.download=true.")
    else:
        lines.append("There is no automatic download for it: fetch it by hand and unpack it as shown.")
    lines.append(ROOT_HINT)
    return DatasetNotFoundError("\n".join(lines))


def combine(errors: Sequence[DatasetNotFoundError]) -> DatasetNotFoundError:
    """One error carrying the messages of several missing datasets."""
    if len(errors) == 1:
        return errors[0]
    # Say where to point norga once, after all the datasets' own messages.
    body = "\n\n".join(str(e).replace("\n" + ROOT_HINT, "") for e in errors)
    return DatasetNotFoundError(f"{len(errors)} datasets not found:\n\n{body}\n\n{ROOT_HINT}")
