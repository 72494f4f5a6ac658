"""ImageSource: one split of one dataset, as labels plus a way to get each image."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import DatasetFileError


class ImageSource(ABC):
    """One split of one dataset.

    ``labels`` are the dataset's own class ids ``0..C-1`` (int64), ``classes`` their names and
    ``transform_kind`` the transform family its images use (see ``norga.data.transforms``).
    ``image(i)`` returns an RGB PIL image. A source that mixes datasets overrides
    ``transform_kind_at`` so each item keeps its own dataset's transform.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, classes: Sequence[str], transform_kind: str):
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.classes = [str(c) for c in classes]
        self.transform_kind = transform_kind
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(
                f"labels must lie in 0..{len(self.classes) - 1}, got {self.labels.min()}..{self.labels.max()}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @abstractmethod
    def image(self, i: int) -> Image.Image:
        """The i-th image, RGB."""

    def transform_kind_at(self, i: int) -> str:
        """Transform family of item ``i``; the source's own kind unless a subclass mixes kinds."""
        return self.transform_kind

    @property
    def transform_kinds(self) -> tuple[str, ...]:
        """Every transform family some item of this source uses."""
        return (self.transform_kind,)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(n={len(self)}, classes={self.num_classes}, kind={self.transform_kind!r})"


class ArraySource(ImageSource):
    """Images held in memory as uint8 arrays: (N, H, W) grey or (N, H, W, 3) RGB."""

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        classes: Sequence[str],
        transform_kind: str,
    ):
        super().__init__(labels, classes, transform_kind)
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise TypeError(f"images must be uint8, got {images.dtype}")
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
            raise ValueError(f"images must be (N, H, W) or (N, H, W, 3), got {images.shape}")
        if len(images) != len(self.labels):
            raise ValueError(f"{len(images)} images but {len(self.labels)} labels")
        self.images = images

    def image(self, i: int) -> Image.Image:
        # Grey arrays stay grey in memory (a third of the size) and become RGB per item.
        return Image.fromarray(self.images[i]).convert("RGB")


class FileSource(ImageSource):
    """Images read from disk on demand, one path per item."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[int] | np.ndarray,
        classes: Sequence[str],
        transform_kind: str,
    ):
        super().__init__(labels, classes, transform_kind)
        self.paths = [os.fspath(p) for p in paths]
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def image(self, i: int) -> Image.Image:
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for unknown, truncated or bad files
            raise DatasetFileError(
                f"cannot read image {path}: {type(err).__name__}: {err}.\n  Expected an image file PIL can decode; "
                f"the file is damaged or not an image: replace it with the one from the dataset's original archive.",
                path,
            ) from err


class ConcatSource(ImageSource):
    """Several sources one after another; class ids offset by the classes of the parts before.

    Each item keeps its own part's transform kind. ``transform_kind`` is the shared kind when all
    parts agree and ``"mixed"`` otherwise, so code that ignores ``transform_kind_at`` fails loudly
    instead of transforming some datasets wrongly.
    """

    def __init__(self, parts: Sequence[ImageSource], names: Sequence[str] | None = None):
        if not parts:
            raise ValueError("ConcatSource needs at least one part")
        names = list(names) if names is not None else [f"part{k}" for k in range(len(parts))]
        if len(names) != len(parts):
            raise ValueError(f"{len(names)} names for {len(parts)} parts")
        self.parts = list(parts)
        self.names = names
        class_offsets = np.cumsum([0] + [p.num_classes for p in parts])
        labels = np.concatenate([p.labels + off for p, off in zip(parts, class_offsets[:-1], strict=True)])
        classes = [f"{n}/{c}" for n, p in zip(names, parts, strict=True) for c in p.classes]
        kinds = {p.transform_kind for p in parts}
        super().__init__(labels, classes, kinds.pop() if len(kinds) == 1 else "mixed")
        self.class_offsets = class_offsets[:-1]
        self._starts = np.cumsum([0] + [len(p) for p in parts])

    def _locate(self, i: int) -> tuple[ImageSource, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self.parts[k], i - int(self._starts[k])

    def image(self, i: int) -> Image.Image:
        part, j = self._locate(int(i))
        return part.image(j)

    def transform_kind_at(self, i: int) -> str:
        part, j = self._locate(int(i))
        return part.transform_kind_at(j)

    @property
    def transform_kinds(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(k for p in self.parts for k in p.transform_kinds))


@dataclass(frozen=True)
class SourcePair:
    """The train and test splits of one dataset (same classes); ``split`` names which train/test split it is
    where a dataset has several (e.g. ``pilot-zip``), for result labels."""

    train: ImageSource
    test: ImageSource
    split: str = ""

    def __post_init__(self) -> None:
        if self.train.classes != self.test.classes:
            raise ValueError("train and test sources must have the same classes in the same order")

    @property
    def num_classes(self) -> int:
        return self.train.num_classes
