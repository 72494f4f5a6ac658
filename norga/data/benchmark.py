"""Class-incremental benchmark: classes split into tasks, torch datasets per task."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DatasetFileError, DatasetNotFoundError
from .source import ImageSource, SourcePair
from .transforms import TRANSFORM_KINDS, build_transform


class SourceDataset(Dataset):
    """Items ``indices`` of a source as ``(image tensor CHW, label)``, label = the dataset's class id.

    Each item is transformed with its own transform kind's transform (``transforms[kind]``).
    ``indices`` (positions in the source) and ``labels`` are available without loading any image.
    """

    def __init__(
        self,
        source: ImageSource,
        indices: np.ndarray,
        transforms: dict[str, Callable],
    ):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = torch.from_numpy(source.labels[self.indices].copy())
        self.transforms = transforms
        self.augment_seed: int | None = None

    def seed_augmentation(self, seed: int) -> SourceDataset:
        """Draw each item's random augmentation from ``(seed, item)`` alone, not from whichever process
        (data-loader worker, torchrun rank) loads it: results then do not depend on ``num_workers`` or on
        the number of GPUs."""
        self.augment_seed = seed
        return self

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, int]:
        i = int(self.indices[j])
        transform = self.transforms[self.source.transform_kind_at(i)]
        if self.augment_seed is None:
            x = transform(self.source.image(i))
        else:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only (what fork_rng restores): torch.manual_seed would also queue a lazy
                # CUDA seeding with a captured stack trace on CUDA builds, a millisecond per image
                torch.default_generator.manual_seed(self.augment_seed * 1_000_003 + i)
                x = transform(self.source.image(i))
        y = int(self.source.labels[i])
        return x, y


class Benchmark:
    """Class-incremental split of one dataset into ``num_tasks`` tasks of equal class count.

    Class order: ``range(C)``, shuffled with ``random.Random(seed).shuffle`` (as the reference does) when
    ``shuffle``, or with ``class_order="numpy_1993"`` permuted by ``numpy.random.RandomState(1993)`` whatever the
    seed (the PILOT family's order: SimpleCIL, RanPAC); task t gets the t-th consecutive group of
    ``C // num_tasks`` classes. Labels are the dataset's own class ids, not remapped (one head covers all C
    classes).
    ``mean``/``std`` reach only the transform kinds that take them (see ``build_transform``);
    ``transform_as`` maps a transform kind to the kind used in its place (``{"cifar100": "default"}``).
    """

    def __init__(
        self,
        pair: SourcePair,
        num_tasks: int,
        seed: int,
        shuffle: bool = True,
        input_size: int = 224,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        class_order: str = "seeded",
        transform_as: Mapping[str, str] | None = None,
    ):
        self.train_source, self.test_source = pair.train, pair.test
        self.classes = list(pair.train.classes)
        self.num_classes = len(self.classes)
        self.num_tasks = int(num_tasks)
        if self.num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        if self.num_classes % self.num_tasks:
            raise ValueError(
                f"{self.num_classes} classes cannot be split into {self.num_tasks} tasks of equal size "
                f"({self.num_classes} % {self.num_tasks} = {self.num_classes % self.num_tasks}); "
                "choose num_tasks dividing the class count"
            )
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.input_size = int(input_size)
        self.mean, self.std = mean, std

        self.transform_as = _check_transform_as(transform_as or {})
        if class_order not in ("seeded", "numpy_1993"):
            raise ValueError(f"dataset.class_order must be seeded or numpy_1993, got {class_order!r}")
        order = list(range(self.num_classes))
        if self.shuffle and class_order == "numpy_1993":
            # PILOT's data manager: np.random.seed(1993); np.random.permutation(C) (legacy MT19937)
            order = np.random.RandomState(1993).permutation(self.num_classes).tolist()
        elif self.shuffle:
            # The reference seeds Python's random with the run seed and shuffles list(range(C)) before any
            # other draw: the same call gives the same class order, so per-seed results are comparable.
            random.Random(self.seed).shuffle(order)
        self.class_order = order
        self.classes_per_task = self.num_classes // self.num_tasks
        k = self.classes_per_task
        self.task_classes = [self.class_order[t * k: (t + 1) * k] for t in range(self.num_tasks)]
        self.class_to_task = np.empty(self.num_classes, dtype=np.int64)
        for t, cs in enumerate(self.task_classes):
            self.class_to_task[cs] = t
        self._transforms: dict[tuple[str, bool], Callable] = {}

    # -- masks -------------------------------------------------------------------------------------
    def class_mask(self, task: int) -> torch.Tensor:
        """Bool (C,): the classes of ``task``."""
        mask = torch.zeros(self.num_classes, dtype=torch.bool)
        mask[self.task_classes[self._task(task)]] = True
        return mask

    def seen_mask(self, task: int) -> torch.Tensor:
        """Bool (C,): the classes of tasks 0..task."""
        return torch.from_numpy(self.class_to_task <= self._task(task))

    def seen_classes(self, task: int) -> list[int]:
        return [c for t in range(self._task(task) + 1) for c in self.task_classes[t]]

    # -- datasets ----------------------------------------------------------------------------------
    def train_set(self, task: int, augment: bool = True) -> SourceDataset:
        """Training items of ``task``; train-time augmentation unless ``augment=False``."""
        return self.train_set_of_classes(self.task_classes[self._task(task)], augment)

    def test_set(self, task: int) -> SourceDataset:
        """Test items of ``task`` with the evaluation transform."""
        return self.test_set_of_classes(self.task_classes[self._task(task)])

    def train_set_of_classes(self, classes: Iterable[int], augment: bool = True) -> SourceDataset:
        """Training items of the given classes (e.g. one class, for per-class statistics)."""
        return self._subset(self.train_source, classes, augment)

    def test_set_of_classes(self, classes: Iterable[int]) -> SourceDataset:
        return self._subset(self.test_source, classes, False)

    def transform(self, kind: str, train: bool) -> Callable:
        """The (cached) transform of one kind, train or eval."""
        key = (kind, bool(train))
        if key not in self._transforms:
            self._transforms[key] = build_transform(kind, self.input_size, train, self.mean, self.std)
        return self._transforms[key]

    def _subset(self, source: ImageSource, classes: Iterable[int], train: bool) -> SourceDataset:
        classes = np.asarray(list(classes), dtype=np.int64)
        indices = np.flatnonzero(np.isin(source.labels, classes))
        transforms = {kind: self.transform(self.transform_as.get(kind, kind), train) for kind in source.transform_kinds}
        return SourceDataset(source, indices, transforms)

    def _task(self, task: int) -> int:
        if not 0 <= task < self.num_tasks:
            raise IndexError(f"task {task} out of range 0..{self.num_tasks - 1}")
        return int(task)

    def __repr__(self) -> str:
        return (
            f"Benchmark(classes={self.num_classes}, tasks={self.num_tasks}, seed={self.seed}, "
            f"shuffle={self.shuffle}, train={len(self.train_source)}, test={len(self.test_source)})"
        )


def _check_transform_as(mapping: Mapping[str, str]) -> dict[str, str]:
    unknown = sorted(({str(k) for k in mapping} | {str(v) for v in mapping.values()}) - set(TRANSFORM_KINDS))
    if unknown:
        raise ValueError(f"dataset.transform_as names unknown transform kinds {unknown}; known kinds: "
                         f"{', '.join(TRANSFORM_KINDS)}")
    return {str(k): str(v) for k, v in mapping.items()}


def build_benchmark(
    dataset_cfg: Any,
    input_size: int,
    seed: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Benchmark:
    """Instantiate ``dataset_cfg.source`` (a loader returning a SourcePair) and split it into tasks."""
    from hydra.utils import instantiate

    try:
        pair = instantiate(dataset_cfg.source)
    except Exception as err:
        # Hydra wraps whatever the loader raised; a missing or damaged dataset should surface as itself, with
        # its message on what to put where, not as an InstantiationException.
        cause = err
        while cause is not None and not isinstance(cause, DatasetNotFoundError | DatasetFileError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None
    if not isinstance(pair, SourcePair):
        raise TypeError(f"dataset.source must build a SourcePair, got {type(pair).__name__}")
    return Benchmark(
        pair,
        num_tasks=dataset_cfg.num_tasks,
        seed=seed,
        shuffle=dataset_cfg.shuffle,
        input_size=input_size,
        mean=mean,
        std=std,
        class_order=dataset_cfg.get("class_order", "seeded"),
        transform_as=dataset_cfg.get("transform_as"),
    )
