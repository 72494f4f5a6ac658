"""CIFAR-100 and CIFAR-10 from torchvision's python-pickle layout."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np

from .errors import DatasetNotFoundError, dataset_not_found
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


def _unpickle(path: str) -> dict:
    with open(path, "rb") as f:
        # The official files are Python 2 pickles: latin1 turns their byte strings into str.
        obj = pickle.load(f, encoding="latin1")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_batches(paths: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for path in paths:
        batch = _unpickle(path)
        data = np.asarray(batch["data"], dtype=np.uint8)
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
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
    classes = [str(c) for c in _unpickle(os.path.join(base, layout.meta_file))[layout.names_key]]
    train_x, train_y = _read_batches([os.path.join(base, f) for f in layout.train_files], layout.label_key)
    test_x, test_y = _read_batches([os.path.join(base, layout.test_file)], layout.label_key)
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
