"""SVHN (cropped digits) from the official train_32x32.mat / test_32x32.mat."""

from __future__ import annotations

import os

import numpy as np

from .errors import DatasetNotFoundError, dataset_not_found
from .source import ArraySource, SourcePair

FOLDER = "svhn"
_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
_URL = "http://ufldl.stanford.edu/housenumbers/ (train_32x32.mat, test_32x32.mat)"


def locate_svhn(root: str) -> dict[str, str]:
    """Paths of the two .mat files; DatasetNotFoundError if either is missing."""
    root = os.path.expanduser(os.fspath(root))
    paths = {split: os.path.join(root, FOLDER, f) for split, f in _FILES.items()}
    missing = [os.path.relpath(p, root) for p in paths.values() if not os.path.isfile(p)]
    if missing:
        tree = "\n".join([f"{FOLDER}/"] + [f"  {f}" for f in _FILES.values()])
        raise dataset_not_found(
            "SVHN", root, os.path.join(root, FOLDER), tree, _URL, missing, torchvision_download=True
        )
    return paths


def download_svhn(root: str) -> None:
    """Fetch both splits with torchvision (md5-checked) into ``<root>/svhn``."""
    import torchvision.datasets as tvd

    for split in _FILES:
        tvd.SVHN(os.path.join(root, FOLDER), split=split, download=True)


def _read(path: str) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    mat = loadmat(path)
    images = np.ascontiguousarray(np.asarray(mat["X"], dtype=np.uint8).transpose(3, 0, 1, 2))
    labels = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    # The files label the digit 0 as 10; torchvision maps it back to 0 and so do we.
    labels[labels == 10] = 0
    return images, labels


def load_svhn(root: str, download: bool = False) -> SourcePair:
    """SVHN from ``<root>/svhn/{train,test}_32x32.mat``; 10 classes, digit d has label d."""
    root = os.path.expanduser(os.fspath(root))
    try:
        paths = locate_svhn(root)
    except DatasetNotFoundError:
        if not download:
            raise
        download_svhn(root)
        paths = locate_svhn(root)
    classes = [str(d) for d in range(10)]
    return SourcePair(*(ArraySource(*_read(paths[s]), classes, "default") for s in ("train", "test")))
