"""Class-incremental evaluation with task-identity inference, without recomputing frozen work.

After task ``t`` every test sample of tasks ``0..t`` goes: frozen backbone -> TII logits over the classes of
tasks ``0..t`` -> predicted class -> its task -> that task's prompt -> prompted features -> WTP logits over
all classes -> top-1. The true task id is never used for prediction, only to score.

What cannot change is computed once: the backbone's class-token features of a test set (the backbone is
frozen), and the prompted features of a sample under prompt ``p`` (prompt ``p`` and the gate parameters are
frozen once task ``p`` is finished). Only the heads, which TAP retrains, are re-applied each time. With
the reference prefix layout a sample's features depend on its batch, so that path recomputes per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import Subset
from tqdm.auto import tqdm

from norga.engine.faults import maybe_crash
from norga.engine.loaders import make_loader
from norga.engine.loops import extract_features, masked_logits


@dataclass
class TaskScore:
    """Scores on one test task, in percent."""

    acc: float
    tii_acc: float
    acc_per_sample_prompt: float | None = None
    tii_acc_per_sample_prompt: float | None = None
    predictions: torch.Tensor | None = field(default=None, repr=False)
    prompt_ids: torch.Tensor | None = field(default=None, repr=False)


@dataclass
class EvalResult:
    tasks: list[TaskScore] = field(default_factory=list)

    @property
    def accs(self) -> list[float]:
        return [s.acc for s in self.tasks]

    @property
    def tii_accs(self) -> list[float]:
        return [s.tii_acc for s in self.tasks]


class PromptedModel:
    """What the evaluator needs from a learner (a structural protocol, documented here)."""

    backbone_features: Callable[[torch.Tensor], torch.Tensor]
    tii_logits: Callable[[torch.Tensor], torch.Tensor]
    prompted_features: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    wtp_logits: Callable[[torch.Tensor], torch.Tensor]


def batchwise_majority(task_ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Each consecutive batch takes its most frequent predicted task (ties: the smallest id)."""
    out = task_ids.clone()
    for start in range(0, len(task_ids), batch_size):
        chunk = task_ids[start:start + batch_size]
        counts = torch.bincount(chunk)
        out[start:start + batch_size] = int(torch.argmax(counts))
    return out


class Evaluator:
    """Scores a learner on the test sets of all seen tasks; counts ViT passes over test sets."""

    def __init__(
        self,
        benchmark,
        device: torch.device,
        batch_size: int,
        num_workers: int = 0,
        cache: bool = True,
        batchwise_prompt: bool = False,
        progress: bool = True,
        max_samples: int | None = None,
    ) -> None:
        self.benchmark = benchmark
        self.max_samples = max_samples
        self.device = device
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache = cache
        self.batchwise_prompt = batchwise_prompt
        self.progress = progress
        self.vit_passes = 0.0  # in whole test sets: a pass over k of n images counts k / n
        self.prompt_changes = 0  # samples re-run because TII picked a prompt not yet computed for them
        self._has_prompted: dict[int, torch.Tensor] = {}  # test task -> (n,) any prompted feature cached
        self._cls: dict[int, torch.Tensor] = {}
        self._labels: dict[int, torch.Tensor] = {}
        self._prompted: dict[tuple[int, int], torch.Tensor] = {}  # (test task, prompt) -> (n, D), NaN = not yet

    def state_dict(self) -> dict:
        return {"vit_passes": self.vit_passes, "prompt_changes": self.prompt_changes}

    def load_state_dict(self, state: dict) -> None:
        self.vit_passes = state["vit_passes"]
        self.prompt_changes = state.get("prompt_changes", 0)

    @torch.no_grad()
    def evaluate(self, model: PromptedModel, upto_task: int, point: str = "") -> EvalResult:
        """Scores on test tasks ``0..upto_task``; ``point`` names this evaluation for crash drills."""
        seen = self.benchmark.seen_mask(upto_task)
        result = EvalResult()
        for task in range(upto_task + 1):
            maybe_crash(f"{point}/test{task}")
            if self.cache:
                result.tasks.append(self._score_cached(model, task, seen))
            else:
                result.tasks.append(self._score_direct(model, task, seen))
        return result

    def _test_set(self, task: int):
        dataset = self.benchmark.test_set(task)
        if self.max_samples is not None and len(dataset) > self.max_samples:
            # an evenly spread subset, so every class of the task stays represented
            step = len(dataset) / self.max_samples
            dataset = Subset(dataset, [int(i * step) for i in range(self.max_samples)])
        return dataset

    def _loader(self, dataset):
        return make_loader(dataset, self.batch_size, self.device, self.num_workers)

    def _class_task(self, classes: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.benchmark.class_to_task, device=classes.device)[classes]

    def _score(self, logits_fn, feats, labels, task, chosen, per_sample_tasks) -> TaskScore:
        logits = logits_fn(feats.to(self.device)).float().cpu()
        acc = 100.0 * (logits.argmax(dim=1) == labels).float().mean().item()
        tii = 100.0 * (chosen == task).float().mean().item()
        score = TaskScore(acc=acc, tii_acc=tii, predictions=logits.argmax(dim=1), prompt_ids=chosen)
        if self.batchwise_prompt:
            score.tii_acc_per_sample_prompt = 100.0 * (per_sample_tasks == task).float().mean().item()
        return score

    def _score_cached(self, model: PromptedModel, task: int, seen: torch.Tensor) -> TaskScore:
        dataset = self._test_set(task)
        if task not in self._cls:
            self._cls[task], self._labels[task] = extract_features(
                model.backbone_features, self._loader(dataset), self.device, f"test {task}: backbone",
                progress=self.progress)
            self.vit_passes += 1
        labels = self._labels[task]
        tii = masked_logits(model.tii_logits(self._cls[task].to(self.device)).float(), seen).cpu()
        per_sample = self._class_task(tii.argmax(dim=1))
        chosen = batchwise_majority(per_sample, self.batch_size) if self.batchwise_prompt else per_sample
        feats = self._prompted_for(model, task, dataset, chosen)
        score = self._score(model.wtp_logits, feats, labels, task, chosen, per_sample)
        if self.batchwise_prompt:
            own = self._prompted_for(model, task, dataset, per_sample)
            score.acc_per_sample_prompt = self._score(model.wtp_logits, own, labels, task, per_sample,
                                                      per_sample).acc
        return score

    def _prompted_for(self, model: PromptedModel, task: int, dataset, prompts: torch.Tensor) -> torch.Tensor:
        n = len(prompts)
        feats = None
        for p in prompts.unique().tolist():
            cached = self._prompted.get((task, p))
            want = (prompts == p).nonzero().flatten()
            missing = want if cached is None else want[torch.isnan(cached[want, 0])]
            if len(missing):
                computed, _ = extract_features(
                    lambda x, p=p: model.prompted_features(x, torch.full((len(x),), p, device=x.device)),
                    self._loader(Subset(dataset, missing.tolist())), self.device,
                    f"test {task}: prompt {p}", progress=self.progress)
                if cached is None:
                    cached = torch.full((n, computed.shape[1]), float("nan"))
                cached[missing] = computed
                self._prompted[(task, p)] = cached
                self.vit_passes += len(missing) / n
                seen_before = self._has_prompted.setdefault(task, torch.zeros(n, dtype=torch.bool))
                self.prompt_changes += int(seen_before[missing].sum())
                seen_before[missing] = True
            if feats is None:
                feats = torch.empty(n, cached.shape[1])
            feats[want] = cached[want]
        return feats

    def _score_direct(self, model: PromptedModel, task: int, seen: torch.Tensor) -> TaskScore:
        """Batch by batch, as the reference does: needed when features depend on batch composition."""
        loader = self._loader(self._test_set(task))
        feats, labels, chosen_all, per_sample_all = [], [], [], []
        for x, y in tqdm(loader, desc=f"test {task}", leave=False, disable=not self.progress):
            x = x.to(self.device)
            tii = masked_logits(model.tii_logits(model.backbone_features(x)).float(), seen)
            per_sample = self._class_task(tii.argmax(dim=1))
            chosen = batchwise_majority(per_sample, len(x)) if self.batchwise_prompt else per_sample
            feats.append(model.prompted_features(x, chosen).float().cpu())
            labels.append(y)
            chosen_all.append(chosen.cpu())
            per_sample_all.append(per_sample.cpu())
        self.vit_passes += 2
        return self._score(model.wtp_logits, torch.cat(feats), torch.cat(labels), task,
                           torch.cat(chosen_all), torch.cat(per_sample_all))
