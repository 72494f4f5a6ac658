"""CUB-200 as the LAMDA family ships it: ``cub/{train,test}/<class>/*.jpg`` (PILOT's ``cub.zip``), a pre-split
copy read in place, beside the official ``CUB_200_2011`` folder (:mod:`norga.data.cub`)."""

from __future__ import annotations

import os

from .split_folder import SplitFolderDataset, locate

CUB_PILOT = SplitFolderDataset(
    name="CUB-200 (PILOT's split)",
    folders=("cub",),
    source="the RCIL/PILOT authors' archive cub.zip (link: LAMDA-PILOT README, 'Datasets'); the images are "
           "CUB-200-2011's, https://data.caltech.edu/records/65de6-vp158",
    license="CUB-200-2011's terms (research use; images from Flickr); whether cub.zip keeps the official "
            "split is not verified",
    archive="cub.zip",
    md5="85e342a2d5f941e740193602057df7a5",
    classes=None,  # as the official loader: the class count is the folder's
)
LAYOUTS = ("auto", "official", "pilot")


def pilot_layout_present(root: str) -> bool:
    try:
        locate(CUB_PILOT, root)
    except FileNotFoundError:
        return False
    return True


def choose_layout(layout: str, root: str, official_folder: str) -> str:
    """``official`` or ``pilot``: ``auto`` takes the official folder when it is there, else PILOT's."""
    if layout not in LAYOUTS:
        raise ValueError(f"dataset.source.layout={layout!r} is not an option; choose one of {', '.join(LAYOUTS)}")
    if layout != "auto":
        return layout
    official = os.path.isdir(os.path.join(os.path.expanduser(os.fspath(root)), official_folder))
    return "pilot" if not official and pilot_layout_present(root) else "official"
