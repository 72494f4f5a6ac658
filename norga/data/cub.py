"""CUB-200-2011 from its official folder (index files plus images/, or the train/ and test/ folders the
reference code moves the images into)."""

from __future__ import annotations

import logging
import os

import numpy as np

from .cub_pilot import CUB_PILOT, choose_layout
from .errors import DatasetFileError, dataset_file_error, dataset_not_found
from .source import FileSource, SourcePair
from .split_folder import load_split_folders

log = logging.getLogger(__name__)

FOLDER = "CUB_200_2011"
_NAME = "CUB-200-2011"
_MOVED = ("train", "test")  # the folders the reference code moves the training and test images into
_INDEX_FILES = ("images.txt", "train_test_split.txt", "image_class_labels.txt", "classes.txt")
_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz (unpack it inside root)"
_TREE = f"""{FOLDER}/
  images.txt              <image id> <path under images/>
  train_test_split.txt    <image id> <1 = train, 0 = test>
  image_class_labels.txt  <image id> <class id, 1-based>
  classes.txt             <class id> <name>
  images/001.Black_footed_Albatross/*.jpg ...
  (or train/ and test/ in place of images/, with the same class folders: the reference code moves the
  images there by the official split)
or PILOT's pre-split copy (cub.zip): cub/train/<class>/*.jpg and cub/test/<class>/*.jpg"""
_FORMAT = {  # what each index file holds, for error messages
    "images.txt": "'<image id> <path under images/>' lines",
    "train_test_split.txt": "'<image id> <1 = train, 0 = test>' lines",
    "image_class_labels.txt": "'<image id> <class id, 1-based>' lines",
    "classes.txt": "'<class id> <name>' lines",
}


def _read_index(path: str) -> dict[int, str]:
    """``<int id> <value>`` per line; the value may contain spaces."""
    expected = "a text file of " + _FORMAT.get(os.path.basename(path), "'<id> <value>' lines")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise dataset_file_error(_NAME, path, expected, err, _URL) from err
    table: dict[int, str] = {}
    for line_no, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        key, sep, value = line.partition(" ")
        if not sep or not key.isdigit():
            raise dataset_file_error(_NAME, path, expected, f"line {line_no} is {line[:80]!r}", _URL)
        if int(key) in table:
            raise dataset_file_error(_NAME, path, expected, f"line {line_no}: id {key} appears twice", _URL)
        table[int(key)] = value.strip()
    return table


def _check_values(path: str, table: dict[int, str], allowed: set[str], what: str) -> None:
    bad = next(((k, v) for k, v in table.items() if v not in allowed), None)
    if bad is not None:
        expected = f"a text file of {_FORMAT[os.path.basename(path)]}"
        raise dataset_file_error(_NAME, path, expected, f"image {bad[0]} has {bad[1][:40]!r}, not {what}", _URL)


def locate_cub(root: str) -> str:
    """The CUB_200_2011 folder; DatasetNotFoundError unless its index files and images/ are there."""
    root = os.path.expanduser(os.fspath(root))
    base = os.path.join(root, FOLDER)
    missing = [os.path.join(FOLDER, f) for f in _INDEX_FILES if not os.path.isfile(os.path.join(base, f))]
    moved = all(os.path.isdir(os.path.join(base, s)) for s in _MOVED)
    if not os.path.isdir(os.path.join(base, "images")) and not moved:
        missing.append(os.path.join(FOLDER, "images/"))
    if missing:
        raise dataset_not_found(_NAME, root, base, _TREE, _URL, missing)
    return base


def load_cub200(root: str, download: bool = False, layout: str = "auto", verify: bool = False) -> SourcePair:
    """CUB-200-2011 with its official train/test split; class ids are the file's 1-based ids minus one.

    ``layout``: ``official`` (``CUB_200_2011/``), ``pilot`` (``cub/{train,test}/<class>/``, PILOT's
    ``cub.zip``, :mod:`norga.data.cub_pilot`; ``verify`` checks ``<root>/cub.zip``'s MD5), or ``auto`` (the
    official folder when there, else PILOT's). There is no checksummed downloader, so ``download`` changes
    nothing.
    """
    root = os.path.expanduser(os.fspath(root))
    if choose_layout(layout, root, FOLDER) == "pilot":
        log.info("CUB-200: reading PILOT's pre-split copy (cub/train, cub/test), not the official split")
        return load_split_folders(CUB_PILOT, root, verify)
    base = locate_cub(root)
    files = {name: os.path.join(base, name) for name in _INDEX_FILES}
    index = {name: _read_index(path) for name, path in files.items()}
    images, is_train, labels, class_names = (index[n] for n in _INDEX_FILES)
    if not (images.keys() == is_train.keys() == labels.keys()):
        odd = sorted(images.keys() ^ is_train.keys() | images.keys() ^ labels.keys())
        raise DatasetFileError(
            f"{_NAME}: {files['images.txt']}, {files['train_test_split.txt']} and "
            f"{files['image_class_labels.txt']} list different ids (e.g. {odd[:5]}): every image id must be in all "
            f"three. Replace them with the files of the original archive ({_URL}).",
            base,
        )
    class_ids = sorted(class_names)
    if class_ids != list(range(1, len(class_ids) + 1)):
        raise dataset_file_error(_NAME, files["classes.txt"], f"a text file of {_FORMAT['classes.txt']}",
                                 f"its class ids are not 1..N (they start {class_ids[:3]})", _URL)
    _check_values(files["train_test_split.txt"], is_train, {"0", "1"}, "1 (train) or 0 (test)")
    _check_values(files["image_class_labels.txt"], labels, {str(k) for k in class_ids},
                  f"a class id of classes.txt (1..{len(class_ids)})")
    # "001.Black_footed_Albatross" -> "Black_footed_Albatross"
    classes = [class_names[k].split(".", 1)[-1] for k in class_ids]

    ids = sorted(images)
    paths, n_moved = [], 0
    for i in ids:
        path = os.path.join(base, "images", images[i])
        # The reference code moves each image from images/<class>/ to train/<class>/ or test/<class>/ by the
        # official split; a copy left that way is read where the images now are (with the same split).
        moved = os.path.join(base, _MOVED[0] if is_train[i] == "1" else _MOVED[1], images[i])
        if not os.path.isfile(path) and os.path.isfile(moved):
            path, n_moved = moved, n_moved + 1
        paths.append(path)
    absent = [os.path.relpath(p, root) for p in paths if not os.path.isfile(p)]
    if absent:
        raise dataset_not_found(_NAME, root, base, _TREE, _URL, absent)
    if n_moved:
        log.info("%s: %d of %d images read from %s/train and %s/test (where the reference code moves them), "
                 "split as train_test_split.txt says", _NAME, n_moved, len(ids), base, base)
    y = np.array([int(labels[i]) - 1 for i in ids], dtype=np.int64)
    train = np.array([is_train[i] == "1" for i in ids])
    paths_arr = np.array(paths, dtype=object)
    return SourcePair(
        FileSource(list(paths_arr[train]), y[train], classes, "default"),
        FileSource(list(paths_arr[~train]), y[~train], classes, "default"),
        split="official",
    )
