"""Datasets shipped as two class-folder trees, ``<folder>/train/<class>/*`` and ``<folder>/test/<class>/*``:
the pre-split archives of the LAMDA family (ImageNet-A, ObjectNet, OmniBenchmark, VTAB, CUB, ImageNet-R).

Read as ``torchvision.datasets.ImageFolder`` reads them, which is what the reference code uses: class ids are
the positions of the class folders in the case-sensitive sorted list of names, images are found recursively,
by extension. Unlike ImageFolder, the train and test trees must hold the same class folders (otherwise test
labels would silently mean other classes). Nothing is written anywhere; ``verify`` checks the maintainers' MD5
of the archive where the user keeps it in ``root``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

from .errors import DatasetFileError, dataset_not_found
from .source import FileSource, SourcePair

log = logging.getLogger(__name__)

# torchvision's IMG_EXTENSIONS (compared lower-case)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class SplitFolderDataset:
    """What a loader of one such dataset knows: where its folder is, where it comes from, under which terms."""

    name: str  # for messages, e.g. "ImageNet-A"
    folders: tuple[str, ...]  # the folder under root, first the usual one, then other layouts' names
    source: str  # where the archive comes from
    license: str  # its terms, as far as they are known
    archive: str | None = None  # the archive's file name, e.g. "ina.zip"
    md5: str | None = None  # the maintainers' MD5 of it
    classes: int | None = None  # the class count the benchmark has
    split: str = "pilot-zip"  # the split id a result label carries (pilot-zip: the pre-split archive)

    def layout(self) -> str:
        first, *others = self.folders
        tree = f"{first}/\n  train/<class>/*.jpg   ({self.classes or 'its'} class folders)\n  test/<class>/*.jpg"
        if others:
            tree += "\n(" + " or ".join(f"{o}/train, {o}/test" for o in others) + " in its place)"
        return tree

    def where_from(self) -> str:
        archive = f" ({self.archive}, md5 {self.md5})" if self.archive else ""
        return f"{self.source}{archive}\nLicence: {self.license}"


def locate(spec: SplitFolderDataset, root: str) -> str:
    """The dataset's folder (the first of ``spec.folders`` holding ``train/`` and ``test/``); a
    DatasetNotFoundError naming the layout, the source and the licence otherwise."""
    root = os.path.expanduser(os.fspath(root))
    for folder in spec.folders:
        base = os.path.join(root, folder)
        if all(os.path.isdir(os.path.join(base, s)) for s in SPLITS):
            return base
    missing = [f"{spec.folders[0]}/{s}/" for s in SPLITS]
    raise dataset_not_found(spec.name, root, os.path.join(root, spec.folders[0]), spec.layout(),
                            spec.where_from(), missing)


def _images(folder: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
    return found


def read_tree(spec: SplitFolderDataset, base: str, split: str, classes: list[str] | None = None
              ) -> tuple[list[str], list[str], list[int]]:
    """(classes, image paths, labels) of ``base/split`` read as ImageFolder does."""
    top = os.path.join(base, split)
    found = sorted(e.name for e in os.scandir(top) if e.is_dir() and not e.name.startswith("."))
    if classes is not None and found != classes:
        odd = sorted(set(found) ^ set(classes))
        raise DatasetFileError(
            f"{spec.name}: {top} holds {len(found)} class folders and {os.path.join(base, SPLITS[0])} holds "
            f"{len(classes)}; they differ in {odd[:5]}{' ...' if len(odd) > 5 else ''}. Both splits need the same "
            f"class folders (class ids are positions in the sorted list): unpack the archive again "
            f"({spec.where_from().splitlines()[0]}).", top)
    paths, labels = [], []
    for k, c in enumerate(found):
        files = _images(os.path.join(top, c))
        paths += files
        labels += [k] * len(files)
    return found, paths, labels


def file_md5(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_archive(spec: SplitFolderDataset, root: str) -> bool:
    """Check ``<root>/<archive>`` against the maintainers' MD5: True when it matches, a DatasetFileError when
    it does not, False (with a warning) when the archive is not in ``root`` to be checked."""
    if not spec.archive or not spec.md5:
        log.warning("%s: dataset.verify=true, but no published MD5 is known for it; nothing was checked", spec.name)
        return False
    path = os.path.join(os.path.expanduser(os.fspath(root)), spec.archive)
    if not os.path.isfile(path):
        log.warning("%s: dataset.verify=true, but %s is not there to be checked (keep the archive beside the "
                    "unpacked folder to check it)", spec.name, path)
        return False
    actual = file_md5(path)
    if actual != spec.md5:
        raise DatasetFileError(
            f"{spec.name}: {path} has MD5 {actual}, but the maintainers' archive has {spec.md5}: it is damaged or "
            f"another version. Download it again from {spec.source}, or run with dataset.verify=false to use it "
            "as it is.", path)
    log.info("%s: %s matches the maintainers' MD5 %s", spec.name, path, spec.md5)
    return True


def load_split_folders(spec: SplitFolderDataset, root: str, verify: bool = False,
                       expected_classes: int | None = None, transform_kind: str = "default") -> SourcePair:
    """The train and test trees of ``spec`` under ``root`` as a SourcePair (split id ``spec.split``).

    ``expected_classes`` (default ``spec.classes``) guards against a partly unpacked folder.
    """
    root = os.path.expanduser(os.fspath(root))
    base = locate(spec, root)
    if verify:
        verify_archive(spec, root)
    classes, train_paths, train_labels = read_tree(spec, base, "train")
    _, test_paths, test_labels = read_tree(spec, base, "test", classes)
    expected = spec.classes if expected_classes is None else expected_classes
    if expected is not None and len(classes) != expected:
        raise DatasetFileError(
            f"{spec.name}: {base}/train holds {len(classes)} class folders, expected {expected}: the archive is "
            f"partly unpacked or another dataset. Unpack it again ({spec.where_from().splitlines()[0]}).", base)
    for split, paths in (("train", train_paths), ("test", test_paths)):
        if not paths:
            raise DatasetFileError(f"{spec.name}: {base}/{split} holds no image files "
                                   f"({', '.join(IMAGE_EXTENSIONS)}); unpack the archive again.", base)
    log.info("%s: %s, %d classes, train %d images, test %d images", spec.name, base, len(classes),
             len(train_paths), len(test_paths))
    return SourcePair(FileSource(train_paths, train_labels, classes, transform_kind),
                      FileSource(test_paths, test_labels, classes, transform_kind), split=spec.split)
