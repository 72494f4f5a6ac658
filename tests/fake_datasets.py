"""Tiny datasets written in the real on-disk formats, for tests.

Every ``make_*`` writes under ``root`` exactly the layout the matching loader in ``norga.data`` reads and
returns the dataset's folder. Pixel values encode the label where a test may want to check it:
array formats put ``(label, 4 * row, 4 * col)``-style patterns in (see each function).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image

LETTERS = "ABCDEFGHIJ"


def cifar_pattern(label: int, size: int = 32) -> np.ndarray:
    """HWC uint8 image: red = label, green = 8 * row, blue = 8 * column (checks the HWC layout).

    Values reach 248: like real photos, the pixel bytes are not all ASCII, which is what makes the Python-2
    pickles unreadable without ``encoding="latin1"``.
    """
    rows, cols = np.mgrid[0:size, 0:size]
    return np.stack([np.full((size, size), label), 8 * rows, 8 * cols], axis=-1).astype(np.uint8)


def _cifar_rows(labels: list[int]) -> np.ndarray:
    # The pickles store each image as 3072 bytes: the red plane, then green, then blue, row-major.
    return np.stack([cifar_pattern(y).transpose(2, 0, 1).reshape(-1) for y in labels]).astype(np.uint8)


def py2_pickle(obj: object) -> bytes:
    """``obj`` pickled as the CIFAR files were, by Python 2's cPickle with protocol 2 and numpy 1.x.

    Every ``str`` and ``bytes`` becomes a Python-2 byte string (SHORT_BINSTRING / BINSTRING), and a numpy
    array is reduced to ``numpy.core.multiarray._reconstruct`` with its raw bytes as such a string. Python 3
    reads these byte strings as ``str`` decoded with the ``encoding`` given to ``pickle.load`` (ASCII by
    default), so the non-ASCII pixel bytes need ``encoding="latin1"``, as with the real files.
    Handles what the CIFAR files hold: dict, list, tuple, str, bytes, int, bool, None, uint8 arrays.
    """
    out = bytearray(b"\x80\x02")  # PROTO 2
    _py2_save(obj, out)
    return bytes(out + b".")  # STOP


def _py2_save(obj: object, out: bytearray) -> None:
    if obj is None:
        out += b"N"
    elif isinstance(obj, bool):
        out += b"\x88" if obj else b"\x89"  # NEWTRUE / NEWFALSE
    elif isinstance(obj, int | np.integer):
        value = int(obj)
        if 0 <= value < 256:
            out += b"K" + struct.pack("<B", value)  # BININT1
        elif 0 <= value < 65536:
            out += b"M" + struct.pack("<H", value)  # BININT2
        else:
            out += b"J" + struct.pack("<i", value)  # BININT
    elif isinstance(obj, str | bytes):
        raw = obj.encode("ascii") if isinstance(obj, str) else obj
        if len(raw) < 256:
            out += b"U" + struct.pack("<B", len(raw)) + raw  # SHORT_BINSTRING
        else:
            out += b"T" + struct.pack("<I", len(raw)) + raw  # BINSTRING
    elif isinstance(obj, tuple):
        out += b"("  # MARK
        for item in obj:
            _py2_save(item, out)
        out += b"t"  # TUPLE
    elif isinstance(obj, list):
        out += b"]("  # EMPTY_LIST, MARK
        for item in obj:
            _py2_save(item, out)
        out += b"e"  # APPENDS
    elif isinstance(obj, dict):
        out += b"}("  # EMPTY_DICT, MARK
        for key, value in obj.items():
            _py2_save(key, out)
            _py2_save(value, out)
        out += b"u"  # SETITEMS
    elif isinstance(obj, np.ndarray) and obj.dtype == np.uint8:
        out += b"cnumpy.core.multiarray\n_reconstruct\n"  # GLOBAL
        out += b"(cnumpy\nndarray\n"
        _py2_save((0,), out)
        _py2_save(b"b", out)
        out += b"tR"  # TUPLE, REDUCE: an empty array ...
        out += b"(K\x01"  # ... then its state: (version 1, shape, dtype, fortran order, raw bytes)
        _py2_save(tuple(obj.shape), out)
        out += b"cnumpy\ndtype\n(U\x02u1K\x00K\x01tR"  # dtype('u1', 0, 1) ...
        _py2_save((3, "|", None, None, None, -1, -1, 0), out)  # ... and its state
        out += b"b\x89"  # BUILD the dtype; NEWFALSE (C order)
        _py2_save(np.ascontiguousarray(obj).tobytes(), out)
        out += b"tb"  # TUPLE, BUILD the array
    else:
        raise TypeError(f"py2_pickle does not handle {type(obj).__name__}")


def _dump(path: Path, obj: dict) -> None:
    path.write_bytes(py2_pickle(obj))


def make_cifar100(
    root: str | os.PathLike, n_per_class: int = 3, num_classes: int = 100, n_test_per_class: int = 1
) -> Path:
    """``<root>/cifar-100-python/{train,test,meta}`` with the real keys."""
    base = Path(root) / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_per_class), ("test", n_test_per_class)):
        labels = [c for _ in range(n) for c in range(num_classes)]
        _dump(base / name, {
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
            "batch_label": f"{name} batch 1 of 1",
            "fine_labels": labels,
            "coarse_labels": [c // 5 for c in labels],
            "data": _cifar_rows(labels),
        })
    _dump(base / "meta", {
        "fine_label_names": [f"class_{c:03d}" for c in range(num_classes)],
        "coarse_label_names": [f"super_{c}" for c in range(max(1, num_classes // 5))],
    })
    return base


def make_cifar10(root: str | os.PathLike, n_per_class: int = 5, n_test_per_class: int = 1) -> Path:
    """``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``; train over 5 batches."""
    base = Path(root) / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    train = [c for _ in range(n_per_class) for c in range(10)]
    batches = [train[k::5] for k in range(5)]
    for k, labels in enumerate(batches, 1):
        _dump(base / f"data_batch_{k}", {
            "batch_label": f"training batch {k} of 5", "labels": labels,
            "data": _cifar_rows(labels), "filenames": [f"t{k}_{i}.png" for i in range(len(labels))],
        })
    test = [c for _ in range(n_test_per_class) for c in range(10)]
    _dump(base / "test_batch", {
        "batch_label": "testing batch 1 of 1", "labels": test,
        "data": _cifar_rows(test), "filenames": [f"e_{i}.png" for i in range(len(test))],
    })
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {"num_cases_per_batch": len(batches[0]), "label_names": names, "num_vis": 3072}
    _dump(base / "batches.meta", meta)
    return base


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    # Magic: 0x00 0x00, type 0x08 (unsigned byte), number of dimensions; then big-endian int32 sizes.
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", s) for s in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def mnist_pattern(label: int) -> np.ndarray:
    """28x28 grey: value 9 * row + label."""
    rows = np.arange(28)[:, None].repeat(28, axis=1)
    return (9 * rows + label).astype(np.uint8)


def make_mnist(
    root: str | os.PathLike, fashion: bool = False, n_train: int = 20, n_test: int = 10, gz: bool = False,
    folder: str | None = None,
) -> Path:
    """``<root>/{MNIST|FashionMNIST}/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``; label i % 10.

    ``folder`` replaces MNIST/FashionMNIST, e.g. ``MNIST_RGB``: torchvision names the folder after the dataset
    class, and the reference code's MNIST is its subclass MNIST_RGB.
    """
    raw = Path(root) / (folder or ("FashionMNIST" if fashion else "MNIST")) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", np.stack([mnist_pattern(y) for y in labels]), gz)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8), gz)
    return raw


def make_mnist_legacy(root: str | os.PathLike, folder: str = "MNIST", n_train: int = 20, n_test: int = 10) -> Path:
    """``<root>/<folder>/processed/{training,test}.pt`` as torchvision before 0.9 wrote them: a torch.save'd
    (images uint8 (N, 28, 28), labels int64 (N,)) tuple per split; label i % 10."""
    import torch

    processed = Path(root) / folder / "processed"
    processed.mkdir(parents=True, exist_ok=True)
    for name, n in (("training.pt", n_train), ("test.pt", n_test)):
        labels = np.arange(n) % 10
        images = np.stack([mnist_pattern(y) for y in labels])
        torch.save((torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))), processed / name)
    return processed


def make_svhn(root: str | os.PathLike, n_train: int = 20, n_test: int = 10, folder: str = "svhn") -> Path:
    """``<root>/svhn/{train,test}_32x32.mat`` with X (32, 32, 3, N) and y (N, 1) in 1..10 (10 = digit 0).

    ``folder=""`` writes them in root itself, as torchvision's SVHN (and so the reference code) keeps them.
    """
    from scipy.io import savemat

    base = Path(root) / folder
    base.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        digits = np.arange(n) % 10
        X = np.stack([cifar_pattern(d) for d in digits], axis=-1)
        y = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
        savemat(base / f"{name}_32x32.mat", {"X": X, "y": y})
    return base


def make_notmnist(
    root: str | os.PathLike, n_train_per_class: int = 2, n_test_per_class: int = 1, broken: int = 1
) -> Path:
    """``<root>/notMNIST/{Train,Test}/{A..J}/*.png`` (28x28 grey), ``broken`` truncated PNGs in Train/A."""
    base = Path(root) / "notMNIST"
    for split, n in (("Train", n_train_per_class), ("Test", n_test_per_class)):
        for k, letter in enumerate(LETTERS):
            folder = base / split / letter
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.full((28, 28), 20 * k + i, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{letter}{i}.png")
    for i in range(broken):
        good = (base / "Train" / "A" / "A0.png").read_bytes()
        (base / "Train" / "A" / f"broken{i}.png").write_bytes(good[: len(good) // 2])
    return base


def wnid(k: int) -> str:
    return f"n{1440000 + 37 * k:08d}"


def make_imagenet_r(
    root: str | os.PathLike, num_classes: int = 4, n_per_class: int = 5, reference_split: bool = False
) -> Path:
    """``<root>/imagenet-r/<wnid>/<style>_<i>.jpg``, assorted sizes; the first image of class 0 is grey.

    ``reference_split``: as the reference code leaves the folder after its first use, the images moved into
    ``imagenet-r/{train,test}/<wnid>/`` (here the first round(0.8 n) of each class to train) and the class
    folders deleted.
    """
    base = Path(root) / "imagenet-r"
    rng = np.random.default_rng(0)
    for k in range(num_classes):
        folder = base / wnid(k)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            h, w = (int(v) for v in rng.integers(12, 30, size=2))
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            img = Image.fromarray(pixels)
            if k == 0 and i == 0:
                img = img.convert("L")
            img.save(folder / f"{('art', 'cartoon', 'sketch')[i % 3]}_{i}.jpg", quality=80)
    if reference_split:
        for k in range(num_classes):
            folder = base / wnid(k)
            for i, path in enumerate(sorted(folder.iterdir(), key=lambda p: int(p.stem.split("_")[1]))):
                split = "train" if i < int(0.8 * n_per_class + 0.5) else "test"
                (base / split / wnid(k)).mkdir(parents=True, exist_ok=True)
                path.rename(base / split / wnid(k) / path.name)
            folder.rmdir()
    return base


def make_cub(
    root: str | os.PathLike, num_classes: int = 4, n_train_per_class: int = 3, n_test_per_class: int = 2,
    moved: bool = False,
) -> Path:
    """``<root>/CUB_200_2011`` with its four index files (1-based ids) and ``images/<class>/*.jpg``.

    ``moved``: as the reference code leaves it, each image moved to ``train/<class>/`` or ``test/<class>/``
    by train_test_split.txt, ``images/<class>/`` left empty.
    """
    base = Path(root) / "CUB_200_2011"
    rng = np.random.default_rng(1)
    images, split, labels, classes = [], [], [], []
    image_id = 0
    for c in range(1, num_classes + 1):
        cls = f"{c:03d}.Bird_{c}"
        classes.append(f"{c} {cls}")
        (base / "images" / cls).mkdir(parents=True, exist_ok=True)
        for j in range(n_train_per_class + n_test_per_class):
            image_id += 1
            rel = f"{cls}/Bird_{c}_{j:04d}_{1000 + image_id}.jpg"
            mode_grey = j == 0 and c == 1  # the real set has a few grey images
            pixels = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
            img = Image.fromarray(pixels).convert("L") if mode_grey else Image.fromarray(pixels)
            img.save(base / "images" / rel)
            images.append(f"{image_id} {rel}")
            split.append(f"{image_id} {1 if j < n_train_per_class else 0}")
            labels.append(f"{image_id} {c}")
    for name, lines in (("images.txt", images), ("train_test_split.txt", split),
                        ("image_class_labels.txt", labels), ("classes.txt", classes)):
        (base / name).write_text("\n".join(lines) + "\n")
    if moved:
        for image, is_train in zip(images, split, strict=True):
            rel = image.split(" ", 1)[1]
            target = base / ("train" if is_train.endswith(" 1") else "test") / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            (base / "images" / rel).rename(target)
    return base


def make_five_datasets(root: str | os.PathLike) -> Path:
    """All five parts of 5-Datasets side by side under ``root`` (each tiny); returns ``root``."""
    make_svhn(root, n_train=20, n_test=10)
    make_mnist(root, n_train=20, n_test=10)
    make_cifar10(root, n_per_class=2, n_test_per_class=1)
    make_notmnist(root, n_train_per_class=2, n_test_per_class=1, broken=0)
    make_mnist(root, fashion=True, n_train=20, n_test=10)
    return Path(root)


def snapshot(root: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (folders too) -> (mtime_ns, size); equal before/after = nothing written."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            out[os.path.relpath(path, root)] = (st.st_mtime_ns, st.st_size)
    return out


def make_split_folders(
    root: str | os.PathLike, folder: str = "imagenet-a", num_classes: int = 4, n_train: int = 3, n_test: int = 2,
    class_names: list[str] | None = None, uneven: bool = False,
) -> Path:
    """``<root>/<folder>/{train,test}/<class>/*.jpg``, the layout of the LAMDA family's pre-split archives
    (ImageNet-A, ObjectNet, OmniBenchmark, VTAB, CUB, ImageNet-R). Class folders are ``n0000000k`` unless
    ``class_names``; ``uneven``: class k has ``n_test + k`` test images (tasks of unequal test size)."""
    base = Path(root) / folder
    rng = np.random.default_rng(2)
    names = class_names or [wnid(k) for k in range(num_classes)]
    for k, name in enumerate(names):
        for split, n in (("train", n_train), ("test", n_test + (k if uneven else 0))):
            (base / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(18, 22, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(base / split / name / f"{name}_{i}.jpg", quality=80)
    return base
