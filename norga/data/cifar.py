"""CIFAR-100 and CIFAR-10 from torchvision's python-pickle layout."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np

from .errors import DatasetNotFoundError, dataset_file_error, dataset_not_found
from .source import ArraySource, SourcePair

# The reference transforms CIFAR-10 (inside 5-Datasets) with the CIFAR transform too.
CIFAR_TRANSFORM_KIND = "cifar100"


@dataclass(frozen=True)
class _Layout:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    url: str
    torchvision_class: str

    def files(self, root: str) -> list[str]:
        names = (*self.train_files, self.test_file, self.meta_file)
        return [os.path.join(root, self.folder, f) for f in names]

    def locate(self, root: str) -> None:
        """Raise DatasetNotFoundError unless every file is there."""
        missing = [os.path.relpath(f, root) for f in self.files(root) if not os.path.isfile(f)]
        if missing:
            tree = "\n".join(
                [f"{self.folder}/"] + [f"  {f}" for f in (*self.train_files, self.test_file, self.meta_file)]
            )
            raise dataset_not_found(
                self.name, root, os.path.join(root, self.folder), tree,
                f"{self.url} (unpack the archive inside root)", missing, torchvision_download=True,
            )


CIFAR100 = _Layout(
    name="CIFAR-100",
    folder="cifar-100-python",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    torchvision_class="CIFAR100",
)

CIFAR10 = _Layout(
    name="CIFAR-10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{k}" for k in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    torchvision_class="CIFAR10",
)


# What a CIFAR pickle may refer to: the numpy functions that rebuild its arrays. ``_reconstruct`` is taken
# from numpy itself, so files written with numpy 1.x (numpy.core) and 2.x (numpy._core) both resolve.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain Python values only: a file that asks for any other global is not a
    CIFAR file, and unpickling it could run code stored in it."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _NUMPY_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no CIFAR file does") from None


def _unpickle(layout: _Layout, path: str, keys: tuple[str, ...]) -> dict:
    """The dict in one of the dataset's pickles, with str keys; ``keys`` must be among them."""
    expected = f"a CIFAR python pickle: a dict with the keys {', '.join(keys)}"
    try:
        with open(path, "rb") as f:
            # The official files are Python 2 pickles: latin1 turns their byte strings into str.
            obj = _CifarUnpickler(f, encoding="latin1").load()
    except Exception as err:  # a damaged pickle fails in many ways: EOFError, UnpicklingError, ValueError, ...
        raise dataset_file_error(layout.name, path, expected, err, layout.url) from err
    if not isinstance(obj, dict):
        raise dataset_file_error(layout.name, path, expected, f"it holds a {type(obj).__name__}", layout.url)
    obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    absent = [k for k in keys if k not in obj]
    if absent:
        found = ", ".join(map(str, list(obj)[:10]))
        raise dataset_file_error(layout.name, path, expected, f"it lacks {', '.join(absent)} (it has: {found})",
                                 layout.url)
    return obj


def _read_batches(layout: _Layout, paths: list[str], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for path in paths:
        batch = _unpickle(layout, path, ("data", layout.label_key))
        data, y = batch["data"], np.asarray(batch[layout.label_key])
        key = layout.label_key
        expected = f"'data' of shape (N, 3072) uint8 and N class ids 0..{num_classes - 1} in '{key}'"
        problem = ""
        if not isinstance(data, np.ndarray):
            problem = f"'data' is a {type(data).__name__}"
        elif data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            problem = f"'data' is a {data.dtype} array of shape {data.shape}"
        elif y.shape != (len(data),):
            problem = f"{len(data)} rows of 'data' but {y.size} values in '{key}'"
        elif not np.issubdtype(y.dtype, np.integer) or (y.size and (y.min() < 0 or y.max() >= num_classes)):
            problem = f"'{key}' holds values that are not class ids 0..{num_classes - 1}"
        if problem:
            raise dataset_file_error(layout.name, path, expected, problem, layout.url)
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(y.astype(np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _download(layout: _Layout, root: str) -> None:
    import torchvision.datasets as tvd

    # torchvision fetches the archive and checks its md5 before extracting it.
    getattr(tvd, layout.torchvision_class)(root, train=True, download=True)


def _load(layout: _Layout, root: str, download: bool) -> SourcePair:
    root = os.path.expanduser(os.fspath(root))
    try:
        layout.locate(root)
    except DatasetNotFoundError:
        if not download:
            raise
        _download(layout, root)
        layout.locate(root)
    base = os.path.join(root, layout.folder)
    meta = os.path.join(base, layout.meta_file)
    names = _unpickle(layout, meta, (layout.names_key,))[layout.names_key]
    if not isinstance(names, list | tuple) or not names:
        raise dataset_file_error(layout.name, meta, f"a list of class names in '{layout.names_key}'",
                                 f"'{layout.names_key}' is {names!r:.80}", layout.url)
    classes = [str(c) for c in names]
    train_x, train_y = _read_batches(layout, [os.path.join(base, f) for f in layout.train_files], len(classes))
    test_x, test_y = _read_batches(layout, [os.path.join(base, layout.test_file)], len(classes))
    return SourcePair(
        ArraySource(train_x, train_y, classes, CIFAR_TRANSFORM_KIND),
        ArraySource(test_x, test_y, classes, CIFAR_TRANSFORM_KIND),
    )


def load_cifar100(root: str, download: bool = False) -> SourcePair:
    """CIFAR-100 from ``<root>/cifar-100-python/{train,test,meta}`` (fine labels, 100 classes)."""
    return _load(CIFAR100, root, download)


def load_cifar10(root: str, download: bool = False) -> SourcePair:
    """CIFAR-10 from ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``."""
    return _load(CIFAR10, root, download)


def locate_cifar10(root: str) -> None:
    """Raise DatasetNotFoundError if CIFAR-10's files are not under ``root``."""
    CIFAR10.locate(os.path.expanduser(os.fspath(root)))
