"""SVHN (cropped digits) from the official train_32x32.mat / test_32x32.mat."""

from __future__ import annotations

import logging
import os

import numpy as np

from .errors import DatasetNotFoundError, dataset_file_error, dataset_not_found
from .source import ArraySource, SourcePair

FOLDER = "svhn"
_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
_URL = "http://ufldl.stanford.edu/housenumbers/ (train_32x32.mat, test_32x32.mat)"

log = logging.getLogger(__name__)


def locate_svhn(root: str) -> dict[str, str]:
    """Paths of the two .mat files, from ``<root>/svhn/`` or else ``<root>/`` itself (torchvision's SVHN
    keeps them in the folder it is given, and the reference code gives it root); DatasetNotFoundError if
    neither folder holds both."""
    root = os.path.expanduser(os.fspath(root))
    for folder in (os.path.join(root, FOLDER), root):
        paths = {split: os.path.join(folder, f) for split, f in _FILES.items()}
        if all(os.path.isfile(p) for p in paths.values()):
            return paths
    names = "{" + ",".join(s for s in _FILES) + "}_32x32.mat"
    missing = [os.path.join(FOLDER, f) for f in _FILES.values() if not os.path.isfile(os.path.join(root, FOLDER, f))]
    missing += [f for f in _FILES.values() if not os.path.isfile(os.path.join(root, f))]
    tree = "\n".join([f"{FOLDER}/"] + [f"  {f}" for f in _FILES.values()]
                     + ["or both directly in root (torchvision's and the reference code's layout):"]
                     + [f"{f}" for f in _FILES.values()])
    expected = f"{os.path.join(root, FOLDER, names)} or {os.path.join(root, names)}"
    raise dataset_not_found("SVHN", root, expected, tree, _URL, missing, torchvision_download=True)


def download_svhn(root: str) -> None:
    """Fetch both splits with torchvision (md5-checked) into ``<root>/svhn``."""
    import torchvision.datasets as tvd

    for split in _FILES:
        tvd.SVHN(os.path.join(root, FOLDER), split=split, download=True)


def _read(path: str) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    expected = "a MATLAB .mat file with X (32, 32, 3, N) uint8 and y (N, 1) labels 1..10"
    try:
        mat = loadmat(path)
    except Exception as err:  # scipy raises ValueError, TypeError, MatReadError, OSError ... on a damaged file
        raise dataset_file_error("SVHN", path, expected, err, _URL) from err
    absent = [k for k in ("X", "y") if k not in mat]
    if absent:
        found = ", ".join(k for k in mat if not k.startswith("__")) or "nothing"
        raise dataset_file_error("SVHN", path, expected, f"it lacks {', '.join(absent)} (it has: {found})", _URL)
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    problem = ""
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        problem = f"X is a {x.dtype} array of shape {x.shape}"
    elif len(y) != x.shape[3]:
        problem = f"X holds {x.shape[3]} images but y {len(y)} labels"
    elif not np.issubdtype(y.dtype, np.integer) or (y.size and (y.min() < 1 or y.max() > 10)):
        problem = "y holds values outside 1..10"
    if problem:
        raise dataset_file_error("SVHN", path, expected, problem, _URL)
    images = np.ascontiguousarray(x.transpose(3, 0, 1, 2))
    labels = y.astype(np.int64)
    # The files label the digit 0 as 10; torchvision maps it back to 0 and so do we.
    labels[labels == 10] = 0
    return images, labels


def load_svhn(root: str, download: bool = False) -> SourcePair:
    """SVHN from ``<root>/svhn/{train,test}_32x32.mat`` (or the two files directly in ``root``); 10 classes,
    digit d has label d."""
    root = os.path.expanduser(os.fspath(root))
    try:
        paths = locate_svhn(root)
    except DatasetNotFoundError:
        if not download:
            raise
        download_svhn(root)
        paths = locate_svhn(root)
    log.info("SVHN: reading %s", " and ".join(paths.values()))
    classes = [str(d) for d in range(10)]
    return SourcePair(*(ArraySource(*_read(paths[s]), classes, "default") for s in ("train", "test")))
