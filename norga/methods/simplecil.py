"""SimpleCIL: no training at all. Each class is the mean of the frozen backbone's features of its training
images (evaluation transform), and a test image goes to the most cosine-similar prototype among the classes
seen so far (docs/algorithm.md#simplecil). A task is ``prototypes -> evaluate``.

:class:`FrozenFeatureLearner` holds what SimpleCIL and RanPAC share: a prediction computed from the query
alone (no prompts, no second pass over the images) and logits over the seen classes only. Neither takes
``method.gate`` or ``method.batchwise_prompt`` (the engine refuses them: ``Learner.takes_*``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from norga.engine.loops import masked_logits
from norga.engine.stages import Stage, StageContext, evaluation
from norga.methods.base import Learner


class FrozenFeatureLearner(Learner):
    """A learner whose features are its query: :meth:`features` returns the query unchanged."""

    features_need_images = False

    def features(self, x, selection, query) -> torch.Tensor:
        return query

    def task_features(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The query features of task ``task``'s training images (evaluation transform, dataset order) and
        their labels; under torchrun gathered from all ranks."""
        with torch.no_grad():
            return self.extract_all(self.query, self.statistics_loader(task), f"task {task} features")

    def seen_logits(self, logits: torch.Tensor, upto_task: int) -> torch.Tensor:
        """``logits`` with the classes of tasks after ``upto_task`` set to -inf: the argmax is over seen ones."""
        return masked_logits(logits, self.benchmark.seen_mask(upto_task))


class PrototypeHead(nn.Module):
    """Class-mean prototypes ``(C, d)`` (rows of classes not seen yet are zero) and cosine logits, scale 1."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Set the prototype of every class in ``labels`` to the mean of its features (summed in float64, so
        the order of the samples does not matter beyond rounding)."""
        for c in labels.unique().tolist():
            mean = features[labels == c].double().mean(dim=0)
            self.prototypes[c] = mean.to(self.prototypes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features.float(), dim=1) @ F.normalize(self.prototypes, dim=1).T


class SimpleCIL(FrozenFeatureLearner):
    """Nearest class mean by cosine on frozen features (Zhou et al., as in docs/algorithm.md#simplecil)."""

    name = "simplecil"

    def __init__(self, cfg, backbone, benchmark, device) -> None:
        super().__init__(cfg, backbone, benchmark, device)
        self.head = PrototypeHead(benchmark.num_classes, backbone.embed_dim).to(device)

    def stages(self, task: int) -> list[Stage]:
        return [Stage("prototypes"), evaluation()]

    def modules(self) -> dict[str, nn.Module]:
        # C x d floats: small enough for every checkpoint, so resuming needs no artifact
        return {"prototypes": self.head}

    def logits(self, features: torch.Tensor, upto_task: int) -> torch.Tensor:
        return self.seen_logits(self.head(features), upto_task)

    def prototypes(self, ctx: StageContext) -> None:
        features, labels = self.task_features(ctx.task)
        self.head.fit(features.to(self.device), labels.to(self.device))
