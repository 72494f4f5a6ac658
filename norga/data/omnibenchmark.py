"""OmniBenchmark's 300-class subset as the LAMDA family splits it: ``omnibenchmark/{train,test}/<class>/``."""

from __future__ import annotations

from .source import SourcePair
from .split_folder import SplitFolderDataset, load_split_folders

OMNIBENCHMARK = SplitFolderDataset(
    name="OmniBenchmark-300",
    folders=("omnibenchmark",),
    source="the RCIL/PILOT authors' split archive omnibenchmark.zip (link: LAMDA-PILOT README, 'Datasets'); "
           "the images are OmniBenchmark's, https://github.com/ZhangYuanhan-AI/OmniBenchmark",
    license="CC BY-NC-ND 4.0 (OmniBenchmark's README): non-commercial, no derivatives",
    archive="omnibenchmark.zip",
    md5="f1c30808a707f9197c6c811ea52e5cbb",
    classes=300,
)


def load_omnibenchmark(root: str, download: bool = False, verify: bool = False,
                       expected_classes: int | None = None) -> SourcePair:
    """OmniBenchmark-300 from ``<root>/omnibenchmark/{train,test}/<class>/``; no downloader. ``verify``: check
    ``<root>/omnibenchmark.zip`` against the maintainers' MD5."""
    return load_split_folders(OMNIBENCHMARK, root, verify, expected_classes)
