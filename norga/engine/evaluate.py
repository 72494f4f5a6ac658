"""Class-incremental evaluation of any learner, without recomputing frozen work.

After task ``t`` every test sample of tasks ``0..t`` goes through the learner's prediction functions
(the learner contract): query (frozen features) -> selection (the prompt(s) it uses, from the query) ->
features under that selection -> class logits -> top-1. The true task id is never given to the learner; it
is only used to score.

What cannot change is computed once: a test set's queries while the learner's ``query_version`` holds, and a
sample's features under a selection while ``features_version`` of that selection holds (e.g. a finished
task's prompt). A learner with ``features_per_id`` (one ViT pass per adapter, features concatenated) has each
id's features cached on their own, so a frozen adapter costs one pass per test set per run. Only what training
changes (heads, selection) is re-applied each time. Learners whose features
depend on the rest of the batch (the reference prefix layout) set ``eval_cacheable = False`` and are evaluated
batch by batch, as the reference does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import Subset
from tqdm.auto import tqdm

from norga.engine.faults import maybe_crash
from norga.engine.loaders import make_loader
from norga.engine.loops import extract_features


@dataclass
class TaskScore:
    """Scores on one test task, in percent (``tii_acc`` None when the learner does not identify tasks)."""

    acc: float
    tii_acc: float | None
    acc_per_sample_prompt: float | None = None
    tii_acc_per_sample_prompt: float | None = None
    predictions: torch.Tensor | None = field(default=None, repr=False)
    selection: torch.Tensor | None = field(default=None, repr=False)  # (n, k) ids used, None without prompts
    chosen_task: torch.Tensor | None = field(default=None, repr=False)  # (n,) task the selection stands for


@dataclass
class EvalResult:
    tasks: list[TaskScore] = field(default_factory=list)

    @property
    def accs(self) -> list[float]:
        return [s.acc for s in self.tasks]

    @property
    def tii_accs(self) -> list[float | None]:
        return [s.tii_acc for s in self.tasks]


def majority_selection(selection: torch.Tensor, ordered: bool = False) -> torch.Tensor:
    """The ``k`` ids chosen most often among the rows of ``selection`` ``(n, k)``, as one sorted row ``(k,)``, or
    with ``ordered`` most frequent first (the reference's order); ties go to the smaller id (what the reference's
    counts + top-k give on CUDA)."""
    k = selection.shape[1]
    counts = torch.bincount(selection.flatten())
    if k == 1:
        return counts.argmax().reshape(1)
    ids = torch.nonzero(counts).flatten()
    # stable sort by count, descending: among equal counts the smaller id stays first
    order = torch.sort(counts[ids], descending=True, stable=True).indices
    return ids[order[:k]] if ordered else ids[order[:k]].sort().values


def batchwise_majority(selection: torch.Tensor, batch_size: int, ordered: bool = False) -> torch.Tensor:
    """Each consecutive batch of ``batch_size`` rows takes its :func:`majority_selection`."""
    out = selection.clone()
    for start in range(0, len(selection), batch_size):
        out[start:start + batch_size] = majority_selection(selection[start:start + batch_size], ordered)
    return out


def assemble_per_id(selection: torch.Tensor, by_id: dict[int, torch.Tensor]) -> torch.Tensor:
    """``(n, k * D)``: row ``r`` is the concatenation of ``by_id[i][r]`` for the ids ``i`` of ``selection[r]``."""
    some = next(iter(by_id.values()))
    selection = selection.to(some.device)
    columns = []
    for col in selection.T:
        out = some.new_empty(len(col), some.shape[1])
        for i, feats in by_id.items():
            mask = col == i
            out[mask] = feats[mask]
        columns.append(out)
    return torch.cat(columns, dim=1)


def _rows(selection: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(r) for r in torch.unique(selection, dim=0).tolist()]


class Evaluator:
    """Scores a learner on the test sets of all seen tasks; counts ViT passes over test sets."""

    def __init__(
        self,
        benchmark,
        device: torch.device,
        batch_size: int,
        num_workers: int = 0,
        cache: bool = True,
        progress: bool = True,
        max_samples: int | None = None,
    ) -> None:
        self.benchmark = benchmark
        self.max_samples = max_samples
        self.device = device
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache = cache
        self.progress = progress
        self.vit_passes = 0.0  # in whole test sets: a pass over k of n images counts k / n
        self.prompt_changes = 0  # samples re-run because their selection changed to one not computed for them
        self._computed: dict[int, torch.Tensor] = {}  # test task -> (n,) any features computed for the sample
        self._query: dict[int, tuple] = {}  # test task -> (version, queries (n, D), labels (n,))
        self._features: dict[tuple, tuple] = {}  # (test task, selection row) -> (version, (n, D), NaN = not yet)

    def state_dict(self) -> dict:
        return {"vit_passes": self.vit_passes, "prompt_changes": self.prompt_changes}

    def load_state_dict(self, state: dict) -> None:
        self.vit_passes = state["vit_passes"]
        self.prompt_changes = state.get("prompt_changes", 0)

    @torch.no_grad()
    def evaluate(self, learner, upto_task: int, point: str = "") -> EvalResult:
        """Scores on test tasks ``0..upto_task``; ``point`` names this evaluation for crash drills."""
        result = EvalResult()
        cached = self.cache and learner.eval_cacheable
        for task in range(upto_task + 1):
            maybe_crash(f"{point}/test{task}")
            score = self._score_cached if cached else self._score_direct
            result.tasks.append(score(learner, task, upto_task))
        return result

    def test_count(self, task: int) -> int:
        """The number of test images an evaluation of ``task`` scores."""
        return len(self._test_set(task))

    def _test_set(self, task: int):
        dataset = self.benchmark.test_set(task)
        if self.max_samples is not None and len(dataset) > self.max_samples:
            # an evenly spread subset, so every class of the task stays represented
            step = len(dataset) / self.max_samples
            dataset = Subset(dataset, [int(i * step) for i in range(self.max_samples)])
        return dataset

    def _loader(self, dataset):
        return make_loader(dataset, self.batch_size, self.device, self.num_workers)

    def _score(self, learner, logits, labels, task, chosen, per_sample) -> TaskScore:
        predictions = logits.float().cpu().argmax(dim=1)
        acc = 100.0 * (predictions == labels).float().mean().item()
        chosen_task = learner.selected_task(chosen)
        tii = None if chosen_task is None else 100.0 * (chosen_task.cpu() == task).float().mean().item()
        score = TaskScore(acc=acc, tii_acc=tii, predictions=predictions,
                          selection=None if chosen is None else chosen.cpu(),
                          chosen_task=None if chosen_task is None else chosen_task.cpu())
        if learner.batchwise_prompt and per_sample is not None:
            own_task = learner.selected_task(per_sample)
            if own_task is not None:
                score.tii_acc_per_sample_prompt = 100.0 * (own_task.cpu() == task).float().mean().item()
        return score

    def _choose(self, learner, selection: torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
        if selection is None or not learner.batchwise_prompt:
            return selection
        return batchwise_majority(selection, batch_size, learner.ordered_selection)

    # ---- cached: queries once per test set, features once per (sample, selection) ---------------------------
    def _score_cached(self, learner, task: int, upto_task: int) -> TaskScore:
        dataset = self._test_set(task)
        version = learner.query_version()
        entry = self._query.get(task)
        if entry is None or entry[0] != version:
            queries, labels = extract_features(learner.query, self._loader(dataset), self.device,
                                               f"test task {task + 1}: query", progress=self.progress)
            self._query[task] = entry = (version, queries, labels)
            self.vit_passes += 1
        _, queries, labels = entry
        per_sample = learner.select(queries.to(self.device), upto_task)
        per_sample = None if per_sample is None else per_sample.cpu()
        chosen = self._choose(learner, per_sample, self.batch_size)
        feats = self._features_for(learner, task, dataset, chosen, queries)
        score = self._score(learner, learner.logits(feats.to(self.device), upto_task), labels, task, chosen,
                            per_sample)
        if learner.batchwise_prompt and per_sample is not None:
            own = self._features_for(learner, task, dataset, per_sample, queries)
            score.acc_per_sample_prompt = self._score(learner, learner.logits(own.to(self.device), upto_task),
                                                      labels, task, per_sample, None).acc
        return score

    def _features_for(self, learner, task: int, dataset, selection: torch.Tensor | None,
                      queries: torch.Tensor) -> torch.Tensor:
        """Features of every sample under its row of ``selection``, from the cache where still valid."""
        if not learner.features_need_images:
            return learner.features(None, None if selection is None else selection.to(self.device),
                                    queries.to(self.device)).float().cpu()
        if learner.features_per_id and selection is not None:
            return self._features_per_id(learner, task, dataset, selection, queries)
        n = len(queries)
        rows = [()] if selection is None else _rows(selection)
        feats = None
        for row in rows:
            want = torch.arange(n) if selection is None else (selection == torch.tensor(row)).all(1).nonzero().flatten()
            cached, missing = self._row_features(learner, task, dataset, row, want, queries,
                                                 whole=len(want) == n and not row)
            if len(missing):
                computed_before = self._computed.setdefault(task, torch.zeros(n, dtype=torch.bool))
                self.prompt_changes += int(computed_before[missing].sum())
                computed_before[missing] = True
            if feats is None:
                feats = torch.empty(n, cached.shape[1])
            feats[want] = cached[want]
        return feats

    def _features_per_id(self, learner, task: int, dataset, selection: torch.Tensor,
                         queries: torch.Tensor) -> torch.Tensor:
        """Features of every sample: the concatenation, in its row's order, of its features under each id."""
        n = len(queries)
        by_id: dict[int, torch.Tensor] = {}
        for i in torch.unique(selection).tolist():
            want = (selection == i).any(dim=1).nonzero().flatten()
            by_id[i], _ = self._row_features(learner, task, dataset, (i,), want, queries, whole=len(want) == n)
        return assemble_per_id(selection, by_id)

    def _row_features(self, learner, task: int, dataset, row: tuple[int, ...], want: torch.Tensor,
                      queries: torch.Tensor, whole: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``(n, D)`` of test set ``task`` under selection ``row`` (``()``: none), valid at least at the
        samples ``want``: reused from the cache while ``features_version(row)`` holds, computed where missing
        (``whole``: ``want`` is the whole test set). Also returns the samples computed now."""
        n = len(queries)
        version = learner.features_version(row) if row else None
        entry = self._features.get((task, row)) if version is not None else None
        cached = entry[1] if entry is not None and entry[0] == version else None
        missing = want if cached is None else want[torch.isnan(cached[want, 0])]
        if len(missing):
            computed = self._compute(learner, task, dataset, missing, row, queries, whole)
            if cached is None:
                cached = torch.full((n, computed.shape[1]), float("nan"))
            cached[missing] = computed
            if version is not None:
                self._features[(task, row)] = (version, cached)
            self.vit_passes += len(missing) / n
        return cached, missing

    def _compute(self, learner, task, dataset, indices, row, queries, whole) -> torch.Tensor:
        subset = dataset if whole else Subset(dataset, indices.tolist())
        sel = torch.tensor(row, dtype=torch.long) if row else None
        out, start = [], 0
        desc = f"test task {task + 1}: " + (f"prompt {' '.join(map(str, row))}" if row else "features")
        for x, _ in tqdm(self._loader(subset), desc=desc, leave=False, disable=not self.progress):
            q = queries[indices[start:start + len(x)]].to(self.device)
            start += len(x)
            batch_sel = None if sel is None else sel.to(self.device).expand(len(x), -1)
            out.append(learner.features(x.to(self.device, non_blocking=True), batch_sel, q).float().cpu())
        return torch.cat(out)

    # ---- direct: batch by batch, as the reference does ------------------------------------------------------
    def _score_direct(self, learner, task: int, upto_task: int) -> TaskScore:
        """Needed when features depend on batch composition (the reference prefix layout)."""
        loader = self._loader(self._test_set(task))
        logits, labels, chosen_all, per_sample_all = [], [], [], []
        for x, y in tqdm(loader, desc=f"test task {task + 1}", leave=False, disable=not self.progress):
            x = x.to(self.device)
            query = learner.query(x)
            per_sample = learner.select(query, upto_task)
            chosen = self._choose(learner, per_sample, len(x))
            if learner.features_per_id and chosen is not None:
                by_id = {i: learner.features(x, torch.full((len(x), 1), i, device=x.device), query).float()
                         for i in torch.unique(chosen).tolist()}
                feats = assemble_per_id(chosen, by_id)
            else:
                feats = learner.features(x if learner.features_need_images else None, chosen, query)
            logits.append(learner.logits(feats, upto_task).float().cpu())
            labels.append(y)
            if per_sample is not None:
                chosen_all.append(chosen.cpu())
                per_sample_all.append(per_sample.cpu())
        views = 1 if not (learner.features_per_id and chosen_all) else len(torch.unique(torch.cat(chosen_all)))
        self.vit_passes += 1 + views if learner.features_need_images else 1
        cat = (lambda parts: torch.cat(parts) if parts else None)  # noqa: E731
        return self._score(learner, torch.cat(logits), torch.cat(labels), task, cat(chosen_all), cat(per_sample_all))
