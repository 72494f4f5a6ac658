"""ImageNet-A (200 classes) as the LAMDA family splits it: ``imagenet-a/{train,test}/<wnid>/*.jpg``."""

from __future__ import annotations

from .source import SourcePair
from .split_folder import SplitFolderDataset, load_split_folders

IMAGENET_A = SplitFolderDataset(
    name="ImageNet-A",
    folders=("imagenet-a",),
    source="the RCIL/PILOT authors' split archive ina.zip (link: LAMDA-PILOT README, 'Datasets'); the images "
           "are Hendrycks et al.'s https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",
    license="the image terms are not stated by its authors (their code is MIT); the split's authors say they "
            "do not have the right to distribute it: research use only",
    archive="ina.zip",
    md5="7f4aaf0b1532b7a0bd670822c152d3c5",
    classes=200,
)


def load_imagenet_a(root: str, download: bool = False, verify: bool = False,
                    expected_classes: int | None = None) -> SourcePair:
    """ImageNet-A from ``<root>/imagenet-a/{train,test}/<class>/``; there is no downloader (``download``
    changes nothing). ``verify``: check ``<root>/ina.zip`` against the maintainers' MD5."""
    return load_split_folders(IMAGENET_A, root, verify, expected_classes)
