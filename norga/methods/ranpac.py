"""RanPAC: frozen features through a fixed random projection and a ReLU, and a ridge-regression head solved
in closed form from statistics accumulated over all tasks (docs/algorithm.md#ranpac).

    h = ReLU(f W),  W (d, M) ~ N(0, 1);   G += H^T H,  Q += H^T Y;   W_o = solve(G + lambda I, Q);   logits = h W_o^T

A task is ``ridge -> evaluate``; with ``method.first_session_adaptation`` task 0 first runs ``adaptation``:
AdaptFormer adapters (:mod:`norga.models.peft.adapter`) trained with a cosine head on task 0, then frozen for good.

State. The head (W_o, ``(C, M)`` float32) and the chosen lambdas are in every checkpoint. G is ``M x M``
float64 (800 MB at M = 10000): it is not checkpointed. Each task's query features ``(n_t, d)`` are written
once as an artifact (``ranpac_task_<t>``, far smaller than G while n_t * d < M * M) and W once
(``ranpac_projection``); on resume G and Q are rebuilt from them in task order, with the same operations
as in the uninterrupted run, so later solves give the same W_o.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from norga.engine.distributed import data_parallel
from norga.engine.loops import shard_cross_entropy
from norga.engine.optim import UNSCALED
from norga.engine.seeding import stage_seed
from norga.engine.stages import Stage, StageContext, evaluation
from norga.methods.base import tensor_digest
from norga.methods.simplecil import FrozenFeatureLearner
from norga.models.peft import ParallelAdapters

log = logging.getLogger(__name__)

CHUNK = 4096  # rows of H formed at once: bounds memory at (CHUNK, M)


# ---- ridge regression ---------------------------------------------------------------------------------------
def select_ridge(hidden: torch.Tensor, targets: torch.Tensor, grid: Sequence[float],
                 fit_fraction: float) -> tuple[float, torch.Tensor]:
    """The lambda of ``grid`` whose ridge fit on the first ``fit_fraction`` of the rows gives the least mean
    squared error on the rest; returns it and the errors ``(len(grid),)``.

    Every lambda is solved exactly in float64 from one symmetric eigendecomposition, of ``H H^T`` or
    ``H^T H``, whichever is smaller (the same solutions as ``solve(H^T H + lambda I, H^T Y)``, and finite
    for a singular Gram matrix: eigenvalues are clamped at 0, so each denominator is at least lambda, and
    numerically null directions, which carry nothing in exact arithmetic, are dropped).
    """
    n = len(hidden)
    n_fit = int(fit_fraction * n)
    if n_fit < 1 or n_fit >= n:
        raise ValueError(f"choosing the ridge needs at least one sample on each side of the fit/validation split: "
                         f"{n} samples with method.ridge_fit_fraction={fit_fraction} leaves {n_fit} to fit and "
                         f"{n - n_fit} to validate")
    h_fit, h_val = hidden[:n_fit], hidden[n_fit:]
    y_fit, y_val = targets[:n_fit].double(), targets[n_fit:].double()
    if n_fit <= hidden.shape[1]:
        # dual form, W = H^T (H H^T + lambda I)^-1 Y: an n_fit x n_fit problem
        h_fit = h_fit.double()
        eig, vec = torch.linalg.eigh(h_fit @ h_fit.T)
        left = torch.cat([c.double() @ h_fit.T for c in h_val.split(CHUNK)]) @ vec
        right = vec.T @ y_fit
    else:
        eig, vec = torch.linalg.eigh(transposed_product(h_fit, h_fit))
        left = torch.cat([c.double() @ vec for c in h_val.split(CHUNK)])
        right = vec.T @ transposed_product(h_fit, y_fit)
    eig, right = null_space_zeroed(eig, right)
    losses = torch.stack([((left / (eig + lam)) @ right - y_val).pow(2).mean() for lam in grid]).cpu()
    # the first minimum, as the authors' argmin (ties go to the smaller lambda when the grid is ascending)
    return float(grid[int(losses.argmin())]), losses


def transposed_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a^T b`` in float64, over chunks of rows (no float64 copy of a whole ``(n, M)`` matrix)."""
    out = None
    for a_c, b_c in zip(a.split(CHUNK), b.split(CHUNK)):
        part = a_c.double().T @ b_c.double()
        out = part if out is None else out.add_(part)
    return out


def ridge_solve(gram: torch.Tensor, rhs: torch.Tensor, lam: float) -> torch.Tensor:
    """``(gram + lam I)^-1 rhs`` in float64: Cholesky, or, where rounding makes ``gram + lam I`` look
    indefinite (lambda far below the largest eigenvalue), the eigendecomposition with eigenvalues clamped at 0."""
    system = gram.clone()
    system.diagonal().add_(lam)
    chol, info = torch.linalg.cholesky_ex(system)
    del system
    if int(info) == 0:
        solution = torch.cholesky_solve(rhs, chol)
        if torch.isfinite(solution).all():
            return solution
    eig, vec = torch.linalg.eigh(gram)
    eig, projected = null_space_zeroed(eig, vec.T @ rhs)
    return vec @ (projected / (eig + lam).unsqueeze(1))


def null_space_zeroed(eig: torch.Tensor, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues of a Gram matrix clamped at 0, and ``projected`` (the right-hand side ``H^T Y`` or ``Y`` in
    the eigenbasis) with the rows of numerically null directions set to 0. Exactly 0 in exact arithmetic
    (a direction with ``G v = 0`` has ``H v = 0``); set so, rounding noise is not divided by a tiny lambda."""
    tol = eig.abs().max() * len(eig) * torch.finfo(eig.dtype).eps
    return eig.clamp_min(0), projected * (eig > tol).unsqueeze(1)


class RidgeStatistics:
    """``G = sum H^T H`` ``(M, M)`` and ``Q = sum H^T Y`` ``(M, C)`` in float64, Y one-hot over all classes."""

    def __init__(self, dim: int, num_classes: int, device: torch.device) -> None:
        self.gram = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.moments = torch.zeros(dim, num_classes, dtype=torch.float64, device=device)

    def add(self, hidden: torch.Tensor, labels: torch.Tensor) -> None:
        h = hidden.to(self.gram)
        self.gram.addmm_(h.T, h)
        # H^T Y without forming Y: column c gains the sum of the rows labelled c
        self.moments.index_add_(1, labels.to(self.gram.device), h.T)

    def solve(self, lam: float) -> torch.Tensor:
        """W_o ``(C, M)``: the ridge solution with ``lam``."""
        return ridge_solve(self.gram, self.moments, lam).T


# ---- modules ------------------------------------------------------------------------------------------------
class RidgeHead(nn.Module):
    """``logits = ReLU(f W) W_o^T``. ``weight`` is W_o ``(C, M)`` (rows of unseen classes are zero);
    ``ridges`` the lambda chosen at each task (0 until chosen). W is a plain buffer, not in the state dict:
    it is written once as an artifact."""

    def __init__(self, projection: torch.Tensor, num_classes: int, num_tasks: int) -> None:
        super().__init__()
        self.register_buffer("projection", projection, persistent=False)
        self.register_buffer("weight", torch.zeros(num_classes, projection.shape[1]))
        self.register_buffer("ridges", torch.zeros(num_tasks, dtype=torch.float64))

    def hidden(self, features: torch.Tensor) -> torch.Tensor:
        return torch.relu(features.to(self.projection) @ self.projection)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # in chunks: a test set's (n, M) hidden layer at M = 10000 need not exist at once
        return torch.cat([self.hidden(f) @ self.weight.T for f in features.split(CHUNK)])


class CosineHead(nn.Module):
    """``sigma * cos(f, w_c)`` with a learnable scale sigma (init 1); weights uniform(+-1/sqrt(d)). The head of
    the first-session adaptation, over task 0's classes."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(dim)
        self.weight = nn.Parameter(torch.empty(num_classes, dim).uniform_(-bound, bound))
        self.sigma = nn.Parameter(torch.ones(1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.sigma * (F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).T)


def draw_projection(seed: int, dim: int, size: int) -> torch.Tensor:
    """W ``(dim, size)`` ~ N(0, 1) from a generator of its own, seeded by the run seed: the same W whatever ran
    before it (the authors draw it from the global RNG after the adaptation)."""
    gen = torch.Generator().manual_seed(stage_seed(seed, 0, "ranpac_projection"))
    return torch.randn(dim, size, generator=gen)


# ---- the learner --------------------------------------------------------------------------------------------
class RanPAC(FrozenFeatureLearner):
    """RanPAC (McDonnell et al.) with the authors' linear head; the adapter variant of its first session."""

    name = "ranpac"
    # the authors' adaptation lr, at their batch of 48, whatever the batch (the ridge head is not trained)
    lr_scaling = {"adaptation": UNSCALED}

    def __init__(self, cfg, backbone, benchmark, device) -> None:
        super().__init__(cfg, backbone, benchmark, device)
        m = self.method
        size = m.projection_dim
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"method.projection_dim is the random projection's width M and must be a positive "
                             f"integer (the authors use 10000), got {size!r}")
        grid = [float(v) for v in m.ridge_grid]
        if not grid or not all(math.isfinite(v) and v > 0 for v in grid):
            raise ValueError(f"method.ridge_grid must list positive, finite ridge values (the authors': "
                             f"[1e-8, 1e-7, ..., 1e8]), got {list(m.ridge_grid)}")
        if not 0 < m.ridge_fit_fraction < 1:
            raise ValueError(f"method.ridge_fit_fraction is the share of a task's samples that fits each candidate "
                             f"ridge (the rest validates it) and must be in (0, 1) (the authors use 0.8), got "
                             f"{m.ridge_fit_fraction}")
        self.grid, self.fit_fraction = grid, float(m.ridge_fit_fraction)
        dim, num_classes = backbone.embed_dim, benchmark.num_classes
        self.head = RidgeHead(draw_projection(cfg.seed, dim, size), num_classes, benchmark.num_tasks).to(device)
        self.adapters: ParallelAdapters | None = None
        self.adaptation_head: CosineHead | None = None
        if m.first_session_adaptation:
            a = m.adaptation
            if not 0 <= a.dropout < 1:
                raise ValueError(f"method.adaptation.dropout must be in [0, 1), got {a.dropout}")
            self.adapters = ParallelAdapters(self.backbone, int(a.bottleneck), float(a.dropout),
                                             float(a.scale)).to(device)
            self.adaptation_head = CosineHead(dim, len(benchmark.task_classes[0])).to(device)
        # G and Q: built on first use, from the task features of finished tasks (own or loaded on resume)
        self._statistics: RidgeStatistics | None = None
        self._task_features: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._accumulated: set[int] = set()

    # ---- the contract ------------------------------------------------------------------------------------
    def stages(self, task: int) -> list[Stage]:
        first = [Stage("adaptation")] if task == 0 and self.adapters is not None else []
        return [*first, Stage("ridge"), evaluation()]

    def modules(self) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {"head": self.head}
        if self.adapters is not None:
            modules.update(adapters=self.adapters, adaptation_head=self.adaptation_head)
        return modules

    def query_version(self) -> Hashable:
        # the adapters change the backbone's features until the end of task 0's adaptation
        return "frozen" if self.adapters is None else tensor_digest(*self.adapters.parameters())

    def logits(self, features: torch.Tensor, upto_task: int) -> torch.Tensor:
        return self.seen_logits(self.head(features), upto_task)

    def load_artifact(self, name: str, state: dict) -> None:
        if name == "ranpac_projection":
            self.head.projection = state["projection"].to(self.device)
        elif name.startswith("ranpac_task_"):
            self._task_features[int(name.rsplit("_", 1)[1])] = (state["features"], state["labels"])
        else:
            super().load_artifact(name, state)

    # ---- stages ------------------------------------------------------------------------------------------
    def adaptation(self, ctx: StageContext) -> None:
        """Task 0 only: train the adapters and a cosine head with cross-entropy over task 0's classes (SGD with
        momentum, cosine annealing per epoch, no gradient clipping, lr not scaled by the batch: the authors')."""
        a, task = self.method.adaptation, ctx.task
        params = [*self.adapters.parameters(), *self.adaptation_head.parameters()]
        self.adapters.train()
        self.adaptation_head.train()
        step = data_parallel({"adapters": self.adapters, "head": self.adaptation_head}, self.adaptation_loss(task))
        self.train_epochs(ctx, step, params, desc="adaptation", epochs=a.epochs, lr=a.lr,
                          schedule={"name": "cosine", "min_lr": float(a.min_lr)},
                          optimizer=partial(torch.optim.SGD, momentum=float(a.momentum),
                                            weight_decay=float(a.weight_decay)),
                          clip_grad=None)
        self.adapters.requires_grad_(False)

    def adaptation_loss(self, task: int):
        """Cross-entropy of the cosine adaptation head over task ``task``'s classes, through the adapters."""
        # global class id -> column of the adaptation head
        column = torch.full((self.benchmark.num_classes,), -1, dtype=torch.long, device=self.device)
        column[self.benchmark.task_classes[task]] = torch.arange(len(self.benchmark.task_classes[task]),
                                                                 device=self.device)

        def loss_fn(x, y):
            with self.amp():  # gradients flow through the frozen backbone into the adapters
                feats = self._vit(self.backbone, x).float()
            return shard_cross_entropy(self.adaptation_head(feats), column[y])

        return loss_fn

    def benchmark_step(self, task: int):
        if self.adapters is None:
            return None  # nothing trains: the ridge head is solved in closed form
        return self.adaptation_loss(0), [*self.adapters.parameters(), *self.adaptation_head.parameters()]

    @torch.no_grad()
    def ridge(self, ctx: StageContext) -> None:
        """The task's features -> lambda chosen on them alone -> G, Q updated -> W_o solved."""
        task = ctx.task
        if self.adapters is not None:
            self.adapters.eval()
            self.adapters.requires_grad_(False)
        if task == 0:
            ctx.save_artifact("ranpac_projection", {"projection": self.head.projection.cpu()})
        features, labels = self.task_features(task)
        # the fit/validation split of the authors is their shuffled loader's order: here a seeded permutation
        order = torch.randperm(len(features), generator=ctx.seed_epoch())
        classes = torch.as_tensor(self.benchmark.task_classes[task])
        targets = (labels[order].unsqueeze(1) == classes).float()  # one-hot over the task's classes
        lam, losses = select_ridge(self.head.hidden(features[order].to(self.device)), targets.to(self.device),
                                   self.grid, self.fit_fraction)
        log.info("task %d: ridge lambda %g (validation MSE %.4g)", task, lam, losses.min().item())
        log.debug("validation MSE over method.ridge_grid: %s", " ".join(f"{v:.4g}" for v in losses.tolist()))
        ctx.save_artifact(f"ranpac_task_{task}", {"features": features, "labels": labels})
        self._task_features[task] = (features, labels)
        statistics = self.statistics()
        self.head.weight.copy_(statistics.solve(lam).to(self.head.weight))
        self.head.ridges[task] = lam

    def statistics(self) -> RidgeStatistics:
        """G and Q over every task whose features are known, added in task order (the order of the
        uninterrupted run, so a resumed run rebuilds them bit for bit)."""
        if self._statistics is None:
            m = self.head.projection.shape[1]
            log.info("RanPAC: G is %d x %d float64 (%.0f MB) on %s", m, m, m * m * 8 / 2**20, self.device)
            self._statistics = RidgeStatistics(m, self.benchmark.num_classes, self.device)
        for task in sorted(set(self._task_features) - self._accumulated):
            features, labels = self._task_features.pop(task)
            for f, y in zip(features.split(CHUNK), labels.split(CHUNK)):
                self._statistics.add(self.head.hidden(f.to(self.device)), y)
            self._accumulated.add(task)
        return self._statistics
