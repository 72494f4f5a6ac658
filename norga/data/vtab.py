"""VTAB-CIL: 50 classes, 10 from each of 5 VTAB datasets, as the RCIL authors built it:
``vtab/{train,test}/<class>/`` (RCIL, RanPAC) or ``vtab-cil/vtab/{train,test}/<class>/`` (LAMDA-PILOT).

Each task is meant to be one source dataset, so its config keeps the class order (``shuffle: false``) under
every protocol."""

from __future__ import annotations

from .source import SourcePair
from .split_folder import SplitFolderDataset, load_split_folders

VTAB = SplitFolderDataset(
    name="VTAB-CIL (50 classes)",
    folders=("vtab", "vtab-cil/vtab"),
    source="the RCIL/PILOT authors' archive vtab.zip (link: LAMDA-PILOT README, 'Datasets'), built from 5 VTAB "
           "datasets (https://github.com/google-research/task_adaptation)",
    license="those of the 5 source datasets (not stated by the archive's authors): research use only",
    archive="vtab.zip",
    md5="a9c37bde6105a2516c900b0c33a437c1",
    classes=50,
)


def load_vtab(root: str, download: bool = False, verify: bool = False,
              expected_classes: int | None = None) -> SourcePair:
    """VTAB-CIL from ``<root>/vtab/`` or ``<root>/vtab-cil/vtab/``; no downloader. ``verify``: check
    ``<root>/vtab.zip`` against the maintainers' MD5."""
    return load_split_folders(VTAB, root, verify, expected_classes)
