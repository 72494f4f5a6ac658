"""ObjectNet's 200-class subset as the LAMDA family splits it: ``objectnet/{train,test}/<class>/``.

ObjectNet's licence forbids tuning any model's parameters on it, which class-incremental training does: the
loader refuses unless the user opts in with ``dataset.accept_license=true``, and the run records that it did
(``license_accepted`` in metrics.json)."""

from __future__ import annotations

from norga.licences import OBJECTNET_LICENSE, check_objectnet_license

from .source import SourcePair
from .split_folder import SplitFolderDataset, load_split_folders

OBJECTNET = SplitFolderDataset(
    name="ObjectNet-200",
    folders=("objectnet",),
    source="the RCIL/PILOT authors' archive objnet.tgz, or their train/test file lists and copy script "
           "(https://github.com/LAMDA-CL/RevisitingCIL/issues/2); the images are ObjectNet's, "
           "https://objectnet.dev/download.html",
    license=OBJECTNET_LICENSE,
    archive="objnet.tgz",
    md5="63ff7443a47bd682016a8ec59b8cc1bc",
    classes=200,
)


def load_objectnet(root: str, download: bool = False, verify: bool = False, accept_license: bool = False,
                   expected_classes: int | None = None) -> SourcePair:
    """ObjectNet-200 from ``<root>/objectnet/{train,test}/<class>/``, only with ``accept_license=True``;
    no downloader. ``verify``: check ``<root>/objnet.tgz`` against the maintainers' MD5."""
    check_objectnet_license(accept_license)
    return load_split_folders(OBJECTNET, root, verify, expected_classes)
