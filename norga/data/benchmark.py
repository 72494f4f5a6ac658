"""Class-incremental benchmark: classes split into tasks, torch datasets per task."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from norga.errors import NorgaError

from .errors import DatasetFileError, DatasetNotFoundError
from .protocol import class_order as make_class_order
from .protocol import order_label, split_name, task_sizes
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
    """Class-incremental split of one dataset into tasks.

    Class order (:mod:`norga.data.protocol`): ``range(C)``, shuffled when ``shuffle`` with
    ``random.Random(seed).shuffle`` (``class_order="seeded"``, as the prompt methods' reference does) or permuted
    by ``numpy.random.RandomState(1993)`` whatever the seed (``"numpy_1993"``, the PILOT family's). Task t gets
    the t-th consecutive group of classes: ``num_tasks`` equal groups, or PILOT's ``B{init}Inc{inc}`` sizes when
    ``increment`` is given. Labels are the dataset's own class ids, not remapped (one head covers all C classes).
    ``mean``/``std`` reach only the transform kinds that take them (see ``build_transform``);
    ``transform_as`` maps a transform kind to the kind used in its place (``{"cifar100": "default"}``);
    ``normalize`` (``recipe``, ``none``, ``backbone``) chooses each family's normalisation.
    """

    def __init__(
        self,
        pair: SourcePair,
        num_tasks: int | None,
        seed: int,
        shuffle: bool = True,
        input_size: int = 224,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        class_order: str = "seeded",
        transform_as: Mapping[str, str] | None = None,
        init_classes: int | None = None,
        increment: int | None = None,
        normalize: str = "recipe",
    ):
        self.train_source, self.test_source = pair.train, pair.test
        self.classes = list(pair.train.classes)
        self.num_classes = len(self.classes)
        self.task_sizes = task_sizes(self.num_classes, num_tasks, init_classes, increment)
        self.num_tasks = len(self.task_sizes)
        self.split_name = split_name(self.task_sizes)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.input_size = int(input_size)
        self.mean, self.std = mean, std
        self.normalize = normalize

        self.transform_as = _check_transform_as(transform_as or {})
        self.class_order = make_class_order(self.num_classes, class_order, self.seed, self.shuffle)
        self.order_label = order_label(class_order, self.seed, self.shuffle)
        # equal tasks: the class count of each; B{init}Inc{inc}: of the tasks after the first
        self.classes_per_task = self.task_sizes[-1] if len(set(self.task_sizes)) == 1 else self.task_sizes[0]
        starts = np.cumsum([0, *self.task_sizes])
        self.task_classes = [self.class_order[starts[t]: starts[t + 1]] for t in range(self.num_tasks)]
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
            self._transforms[key] = build_transform(kind, self.input_size, train, self.mean, self.std,
                                                    normalize=self.normalize)
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
            f"Benchmark(classes={self.num_classes}, tasks={self.num_tasks} ({self.split_name}), "
            f"order={self.order_label}, train={len(self.train_source)}, test={len(self.test_source)})"
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
        while cause is not None and not isinstance(cause, DatasetNotFoundError | DatasetFileError | NorgaError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None
    if not isinstance(pair, SourcePair):
        raise TypeError(f"dataset.source must build a SourcePair, got {type(pair).__name__}")
    get = dataset_cfg.get  # the protocol's keys (norga.data.protocol); absent in configs made before them
    benchmark = Benchmark(
        pair,
        num_tasks=dataset_cfg.num_tasks,
        seed=seed,
        shuffle=dataset_cfg.shuffle,
        input_size=input_size,
        mean=mean,
        std=std,
        class_order=get("class_order", "seeded"),
        transform_as=get("transform_as"),
        init_classes=get("init_classes"),
        increment=get("increment"),
        normalize=get("normalize", "recipe"),
    )
    benchmark.data_split = getattr(pair, "split", "")
    log_counts(get("name", "?"), pair, benchmark)
    return benchmark


def log_counts(name: str, pair: SourcePair, benchmark: Benchmark) -> None:
    """Every run's log says how many images each split holds: the check against a partly unpacked folder."""
    import logging

    split = f", split {pair.split}" if getattr(pair, "split", "") else ""
    logging.getLogger("norga").info(
        "dataset %s: %d classes, train %d images, test %d images%s; %d tasks (%s), class order %s",
        name, benchmark.num_classes, len(pair.train), len(pair.test), split, benchmark.num_tasks,
        benchmark.split_name, benchmark.order_label)
