"""The two class-incremental protocols' choices that shape a benchmark: class order and task sizes.

* ``seeded`` (HiDe-Prompt / NoRGa): ``random.Random(seed).shuffle(list(range(C)))`` with the run seed.
* ``numpy_1993`` (LAMDA-PILOT, RCIL, EASE, MOS, RanPAC): ``numpy.random.RandomState(1993).permutation(C)`` whatever
  the run seed. NumPy's legacy MT19937: ``default_rng`` gives another order. ``numpy_<seed>`` is the same
  permutation from another fixed seed (SD-LoRA's ImageNet-R config: ``numpy_1995``).

Either applies only when the dataset is shuffled (``dataset.shuffle``); otherwise the order is ``range(C)``
(VTAB, 5-Datasets: a task is one source dataset).

Task sizes: equal tasks from ``num_tasks`` (HiDe), or PILOT's ``B{init}Inc{inc}`` rule: ``[init]``, then
``inc`` while the total stays below C, then the remainder (``init=0`` means ``init=inc``).
"""

from __future__ import annotations

import random
import re

import numpy as np

CLASS_ORDERS = ("seeded", "numpy_1993")  # the named ones; numpy_<seed> takes any fixed seed
PILOT_SEED = 1993
#: every accepted ``dataset.class_order``: ``seeded`` or ``numpy_<seed>`` (a fixed seed, whatever the run seed)
CLASS_ORDER_PATTERN = r"seeded|numpy_\d+"


def numpy_seed(kind: str) -> int | None:
    """The fixed seed of a ``numpy_<seed>`` order, None for ``seeded``; ValueError for anything else."""
    if not re.fullmatch(CLASS_ORDER_PATTERN, str(kind)):
        raise ValueError(f"dataset.class_order must be seeded or numpy_1993 (numpy_<seed>: numpy's permutation "
                         f"with that fixed seed), got {kind!r}")
    return None if kind == "seeded" else int(str(kind).split("_", 1)[1])


def class_order(num_classes: int, kind: str, seed: int, shuffle: bool = True) -> list[int]:
    """The original class ids in task order (``seed``: the run seed, used by ``seeded``)."""
    fixed = numpy_seed(kind)
    order = list(range(int(num_classes)))
    if not shuffle:
        return order
    if fixed is None:
        # HiDe's reference seeds Python's random with the run seed and shuffles before any other draw
        random.Random(int(seed)).shuffle(order)
        return order
    # PILOT's data manager: np.random.seed(1993); np.random.permutation(C)
    return [int(c) for c in np.random.RandomState(fixed).permutation(int(num_classes))]


def order_label(kind: str, seed: int, shuffle: bool = True) -> str:
    """The order as a result label says it: ``identity``, ``py-seed-42`` or ``np-seed-1993``."""
    if not shuffle:
        return "identity"
    fixed = numpy_seed(kind)
    return f"np-seed-{fixed}" if fixed is not None else f"py-seed-{int(seed)}"


def task_sizes(num_classes: int, num_tasks: int | None, init_classes: int | None = None,
               increment: int | None = None) -> list[int]:
    """Classes per task.

    Without ``increment``: ``num_tasks`` equal tasks (an error unless they divide C). With it: PILOT's
    ``B{init}Inc{inc}`` rule; ``num_tasks`` (if given) must equal the number of tasks it makes.
    """
    c = int(num_classes)
    if increment is None:
        if init_classes not in (None, 0):
            raise ValueError("dataset.init_classes needs dataset.increment (B{init}Inc{inc}); set both, or "
                             "neither for num_tasks equal tasks")
        if num_tasks is None or int(num_tasks) < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        t = int(num_tasks)
        if c % t:
            raise ValueError(
                f"{c} classes cannot be split into {t} tasks of equal size ({c} % {t} = {c % t}); choose "
                "num_tasks dividing the class count, or B{init}Inc{inc} tasks with dataset.init_classes and "
                "dataset.increment")
        return [c // t] * t
    inc = int(increment)
    init = inc if init_classes in (None, 0) else int(init_classes)
    if inc < 1 or init < 1 or init > c:
        raise ValueError(f"dataset.init_classes={init_classes}, dataset.increment={increment}: need "
                         f"1 <= increment and 1 <= init_classes <= {c} classes")
    sizes = [init]
    while sum(sizes) + inc < c:
        sizes.append(inc)
    if c - sum(sizes) > 0:
        sizes.append(c - sum(sizes))
    if num_tasks is not None and int(num_tasks) != len(sizes):
        raise ValueError(
            f"dataset.num_tasks={num_tasks}, but {split_name(sizes)} on {c} classes makes {len(sizes)} tasks "
            f"({sizes}); set dataset.num_tasks={len(sizes)}")
    return sizes


def split_name(sizes: list[int]) -> str:
    """PILOT's name of a task split: ``B0Inc20`` for equal tasks of 20, ``B50Inc10`` for 50 then tens (a
    last smaller remainder is implied by the class count)."""
    if len(sizes) == 1:
        return f"B0Inc{sizes[0]}"
    inc = sizes[1]
    return f"B0Inc{inc}" if sizes[0] == inc else f"B{sizes[0]}Inc{inc}"
