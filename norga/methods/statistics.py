"""Per-class Gaussian statistics of features, and sampling from them for task-adaptive prediction (TAP).

Variants (``method.statistics``):
* ``covariance``: mean and full covariance (+1e-4 I) per class.
* ``variance``: mean and the diagonal of that covariance.
* ``multi_centroid``: k-means (``n_centroids``) per class, mean and per-dimension variance per cluster;
  samples use variance + 1e-4.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch

StatsKind = Literal["covariance", "variance", "multi_centroid"]
_EPS = 1e-4


class ClassStatistics:
    """Gaussian summaries of each class's features, filled task by task."""

    def __init__(self, kind: StatsKind = "covariance", n_centroids: int = 10, seed: int = 0) -> None:
        if kind not in ("covariance", "variance", "multi_centroid"):
            raise ValueError(f"statistics must be covariance, variance or multi_centroid, got {kind!r}")
        self.kind = kind
        self.n_centroids = n_centroids
        self.seed = seed
        # class id -> (means (K, D), spread): spread is (K, D, D) cholesky factors or (K, D) std devs
        self.means: dict[int, torch.Tensor] = {}
        self.spread: dict[int, torch.Tensor] = {}

    def __contains__(self, cls: int) -> bool:
        return cls in self.means

    def __len__(self) -> int:
        return len(self.means)

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add (or replace) the statistics of every class present in ``labels``."""
        features = features.detach().to("cpu", torch.float64)
        labels = labels.detach().cpu()
        for cls in sorted(labels.unique().tolist()):
            x = features[labels == cls]
            if self.kind == "multi_centroid":
                self.means[cls], self.spread[cls] = self._centroids(x, cls)
                continue
            mean = x.mean(dim=0)
            cov = torch.cov(x.T) if len(x) > 1 else torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype)
            cov = cov + _EPS * torch.eye(x.shape[1], dtype=x.dtype)
            if self.kind == "covariance":
                spread = torch.linalg.cholesky(cov)
            else:
                spread = torch.diagonal(cov).sqrt()
            # float32 storage: a ViT-B class's Cholesky factor is 2.4 MB, 200 classes 0.5 GB
            self.means[cls] = mean.unsqueeze(0).float()
            self.spread[cls] = spread.unsqueeze(0).float()

    def _centroids(self, x: torch.Tensor, cls: int) -> tuple[torch.Tensor, torch.Tensor]:
        from sklearn.cluster import KMeans

        k = min(self.n_centroids, len(x))
        kmeans = KMeans(n_clusters=k, n_init="auto", random_state=self.seed + cls).fit(x.numpy())
        means, stds = [], []
        for c in range(k):
            members = x.numpy()[kmeans.labels_ == c]
            var = np.var(members, axis=0)
            if var.mean() == 0:  # a single-member (or degenerate) cluster: the reference skips it
                continue
            means.append(torch.from_numpy(members.mean(axis=0)))
            stds.append(torch.from_numpy(var + _EPS).sqrt())
        if not means:
            raise ValueError(f"class {cls}: every k-means cluster is degenerate; use statistics=covariance")
        return torch.stack(means).float(), torch.stack(stds).float()

    def mean_matrix(self, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """All stored means (every centroid for multi-centroid), in class insertion order: ``(M, D)``."""
        if not self.means:
            return None
        return torch.cat(list(self.means.values())).to(device)

    @torch.no_grad()
    def sample(self, classes: list[int], n_per_class: int,
               mean_scale: Mapping[int, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n_per_class`` features per class (split evenly over centroids), drawn with torch's global RNG;
        ``mean_scale`` (class -> factor) multiplies a class's mean(s) before drawing (TUNA's decay)."""
        xs, ys = [], []
        for cls in classes:
            means, spread = self.means[cls], self.spread[cls]
            if mean_scale is not None:
                means = means * mean_scale[cls]
            n = n_per_class // self.n_centroids if self.kind == "multi_centroid" else n_per_class
            for mean, s in zip(means, spread):
                z = torch.randn(n, mean.shape[0])
                noise = z @ s.T if s.dim() == 2 else z * s
                xs.append(mean + noise)
                ys.append(torch.full((n,), cls, dtype=torch.long))
        return torch.cat(xs), torch.cat(ys)

    def state_dict(self, classes: list[int] | None = None) -> dict:
        """The statistics of ``classes`` (default: all); a class's statistics never change once fitted, so
        checkpoints store each class once, in the checkpoint of its task."""
        keep = list(self.means) if classes is None else [c for c in classes if c in self.means]
        return {"kind": self.kind, "means": {c: self.means[c] for c in keep},
                "spread": {c: self.spread[c] for c in keep}}

    def load_state_dict(self, state: dict, merge: bool = False) -> None:
        """Replace the statistics by ``state`` (or add its classes to the present ones with ``merge``)."""
        if state["kind"] != self.kind:
            raise ValueError(f"statistics kind {state['kind']!r} in checkpoint, {self.kind!r} configured")
        if not merge:
            self.means, self.spread = {}, {}
        self.means.update(state["means"])
        self.spread.update(state["spread"])
