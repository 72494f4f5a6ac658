"""MNIST and Fashion-MNIST from torchvision's raw idx files (plain or .gz), or its older processed .pt files."""

from __future__ import annotations

import gzip
import logging
import os
import zlib

import numpy as np

from .errors import DatasetNotFoundError, dataset_file_error, dataset_not_found
from .source import ArraySource, SourcePair

log = logging.getLogger(__name__)

_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_LEGACY = {"train": "training.pt", "test": "test.pt"}
# Folders a copy may sit in under root, in the order they are tried: torchvision's (named after its dataset
# class), then the reference code's (its MNIST_RGB subclass of torchvision's MNIST gets a folder of its own).
_FOLDERS = {False: ("MNIST", "MNIST_RGB"), True: ("FashionMNIST",)}
_UBYTE = 0x08

_VARIANTS = {
    # folder under root (torchvision's class name), display name, source, class names
    False: (
        "MNIST",
        "MNIST",
        "https://ossci-datasets.s3.amazonaws.com/mnist/ (mirror of http://yann.lecun.com/exdb/mnist/)",
        [f"{d} - {w}" for d, w in enumerate(
            ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])],
    ),
    True: (
        "FashionMNIST",
        "Fashion-MNIST",
        "https://github.com/zalandoresearch/fashion-mnist (files at "
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/)",
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle boot"],
    ),
}


def read_idx(path: str, name: str = "MNIST", source: str = "") -> np.ndarray:
    """Read an idx file of unsigned bytes (gzip-compressed when the name ends in .gz).

    ``name`` (the dataset) and ``source`` (where intact files come from) go into the
    :class:`DatasetFileError` raised for a damaged file.
    """
    expected = "an idx file of unsigned bytes (magic 0x00000801/0x00000803), plain or gzip-compressed"
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:  # a damaged .gz: BadGzipFile (an OSError), EOF, CRC errors
        raise dataset_file_error(name, path, expected, err, source) from err
    # Magic: two zero bytes, a type code (0x08 = unsigned byte) and the number of dimensions.
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UBYTE or not 1 <= data[3] <= 3:
        magic = data[:4].hex() or "absent: the file is empty"
        raise dataset_file_error(name, path, expected, f"it is not an unsigned-byte idx file (magic {magic})", source)
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise dataset_file_error(name, path, expected, f"its header is cut short ({len(data)} bytes)", source)
    shape = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    size = int(np.prod(shape))
    if len(data) - offset != size:
        problem = f"the header says {shape} ({size} bytes) but {len(data) - offset} follow"
        raise dataset_file_error(name, path, expected, problem, source)
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _find(raw: str, name: str) -> str | None:
    for candidate in (name, name + ".gz"):
        path = os.path.join(raw, candidate)
        if os.path.isfile(path):
            return path
    return None


def _copy_in(folder: str) -> dict[str, tuple[str, ...]] | None:
    """A complete copy in ``folder``: per split, its (images, labels) idx files from ``raw/``, or else its
    legacy ``processed/*.pt`` file (written by torchvision before 0.9); None if there is neither."""
    raw = os.path.join(folder, "raw")
    found = {key: _find(raw, f) for key, f in _FILES.items()}
    if all(found.values()):
        return {s: (found[f"{s}_images"], found[f"{s}_labels"]) for s in ("train", "test")}  # type: ignore[misc]
    legacy = {s: os.path.join(folder, "processed", f) for s, f in _LEGACY.items()}
    if all(os.path.isfile(p) for p in legacy.values()):
        return {s: (p,) for s, p in legacy.items()}
    return None


def locate_mnist(root: str, fashion: bool = False) -> dict[str, tuple[str, ...]]:
    """The files of the first complete copy under ``root``, per split: ``(images idx, labels idx)`` or
    ``(legacy .pt,)``; DatasetNotFoundError if there is none.

    Folders tried in order: torchvision's (``MNIST``/``FashionMNIST``), then the reference code's
    ``MNIST_RGB`` (its MNIST subclass, which torchvision files under the subclass's name).
    """
    root = os.path.expanduser(os.fspath(root))
    _, name, url, _ = _VARIANTS[fashion]
    folders = _FOLDERS[fashion]
    for folder in folders:
        files = _copy_in(os.path.join(root, folder))
        if files is not None:
            return files
    raw = os.path.join(root, folders[0], "raw")
    missing = [os.path.join(folders[0], "raw", f) for f in _FILES.values() if _find(raw, f) is None]
    tree = [f"{folders[0]}/", "  raw/"] + [f"    {f}[.gz]" for f in _FILES.values()]
    tree += [f"(or the same under {f}/raw/, the reference code's folder)" for f in folders[1:]]
    tree.append("(or, as torchvision before 0.9 left them, processed/{training,test}.pt in place of raw/)")
    raise dataset_not_found(name, root, raw, "\n".join(tree), url, missing, torchvision_download=True)


def download_mnist(root: str, fashion: bool = False) -> None:
    """Fetch the files with torchvision (which checks their md5s) into ``<root>/<folder>/raw``."""
    import torchvision.datasets as tvd

    (tvd.FashionMNIST if fashion else tvd.MNIST)(root, train=True, download=True)


def _read_legacy(path: str, name: str, url: str) -> tuple[np.ndarray, np.ndarray]:
    """The (images, labels) tensors old torchvision saved in ``processed/*.pt``, as arrays."""
    import torch

    expected = "old torchvision's processed file: torch.save((images uint8 (N, 28, 28), labels (N,)))"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged files
        raise dataset_file_error(name, path, expected, err, url) from err
    if not (isinstance(obj, tuple | list) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj)):
        raise dataset_file_error(name, path, expected, f"it holds a {type(obj).__name__}", url)
    images, labels = obj[0].numpy(), obj[1].numpy()
    if images.dtype != np.uint8:
        raise dataset_file_error(name, path, expected, f"the images are {images.dtype}", url)
    return images, labels


def _read_split(files: tuple[str, ...], name: str, url: str, classes: list[str]) -> ArraySource:
    if len(files) == 1:
        images, labels = _read_legacy(files[0], name, url)
        image_file = label_file = files[0]
    else:
        image_file, label_file = files
        images, labels = read_idx(image_file, name, url), read_idx(label_file, name, url)
    if images.ndim != 3:
        raise dataset_file_error(name, image_file, "N images of 28 x 28 (3 dimensions)",
                                 f"it holds an array of shape {images.shape}", url)
    problem = ""
    if labels.ndim != 1 or len(labels) != len(images):
        problem = f"it holds labels of shape {labels.shape}"
    elif labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        problem = f"it holds labels {labels.min()}..{labels.max()}"
    if problem:
        expected = f"{len(images)} labels 0..{len(classes) - 1}, one per image of {image_file}"
        raise dataset_file_error(name, label_file, expected, problem, url)
    return ArraySource(images, labels.astype(np.int64), classes, "default")


def load_mnist(root: str, download: bool = False, fashion: bool = False) -> SourcePair:
    """MNIST (or Fashion-MNIST with ``fashion=True``) from ``<root>/<MNIST|FashionMNIST>/raw``, or from a
    folder the reference code left (see :func:`locate_mnist`).

    Images stay 28x28 grey in memory and come out RGB.
    """
    root = os.path.expanduser(os.fspath(root))
    try:
        files = locate_mnist(root, fashion)
    except DatasetNotFoundError:
        if not download:
            raise
        download_mnist(root, fashion)
        files = locate_mnist(root, fashion)
    _, name, url, classes = _VARIANTS[fashion]
    log.info("%s: reading %s", name, ", ".join(os.path.relpath(f, root) for s in files.values() for f in s))
    return SourcePair(*(_read_split(files[s], name, url, classes) for s in ("train", "test")))


def load_fashion_mnist(root: str, download: bool = False) -> SourcePair:
    """Fashion-MNIST from ``<root>/FashionMNIST/raw``."""
    return load_mnist(root, download, fashion=True)
