"""InfLoRA's subspace memory: the design of a task's down-projection from an input covariance, and the DualGPM
(or GPM) update of the protected subspace after the task (docs/algorithm.md#inflora).

Per LoRA'd block the memory holds an orthonormal basis ``B`` (d x m) and its type: ``remove`` (B spans the
inputs earlier tasks used: a new task's down-projection is designed in its orthogonal complement) or
``retain`` (B spans the FREE space: the new task's design stays inside it). ``P = B B^T``.

The energies of the threshold rule are, as the authors compute them, the squares of the singular values of the
covariance C itself (eigenvalues of a symmetric PSD matrix, so the code's ``S**2`` are squared eigenvalues):
``energy_on=squared_eigs``; ``eigs`` uses the eigenvalues (the data's squared singular values) instead.
Every decomposition runs in float64 on the CPU; singular vectors get a fixed sign (largest entry positive),
so that the design does not depend on the LAPACK build (the sign of a row of D_t is immaterial to training:
U_t starts at zero and Adam is sign-equivariant per coordinate).
"""

from __future__ import annotations

import math

import torch
from torch import nn

ENERGIES = ("squared_eigs", "eigs")
MEMORIES = ("dualgpm", "gpm")
NONE, REMOVE, RETAIN = 0, 1, 2
KINDS = {NONE: "none", REMOVE: "remove", RETAIN: "retain"}


def signed_svd(matrix: torch.Tensor, full: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors (columns, each with its largest-magnitude entry positive) and singular values of
    ``matrix``, in float64."""
    u, s, _ = torch.linalg.svd(matrix.double(), full_matrices=full)
    idx = u.abs().argmax(dim=0)
    sign = torch.sign(u[idx, torch.arange(u.shape[1])])
    sign[sign == 0] = 1
    return u * sign, s


def energies(s: torch.Tensor, energy_on: str) -> torch.Tensor:
    """The energy of each component: its singular value squared (the authors', on a covariance) or as is."""
    if energy_on not in ENERGIES:
        raise ValueError(f"method.energy_on must be one of {', '.join(ENERGIES)}, got {energy_on!r}")
    return s * s if energy_on == "squared_eigs" else s


def threshold(lamb: float, lame: float, task: int, num_tasks: int) -> float:
    """eps_t = lamb + (lame - lamb) t / T (t 0-based, T the number of tasks)."""
    return lamb + (lame - lamb) * task / num_tasks


def design_down(cov: torch.Tensor, basis: torch.Tensor | None, kind: int, rank: int) -> torch.Tensor:
    """D_t ``(rank, d)``: the first ``rank`` left singular vectors of C (no memory yet), of ``C - P C``
    (``remove``) or of ``P C`` (``retain``), transposed, divided by sqrt(3) (the authors' factor)."""
    c = cov.double()
    if basis is not None and kind != NONE:
        b = basis.double()
        pc = b @ (b.T @ c)
        c = c - pc if kind == REMOVE else pc
    u, _ = signed_svd(c, full=True)
    return u[:, :rank].T / math.sqrt(3)


def first_basis(cov: torch.Tensor, eps: float, energy_on: str) -> torch.Tensor:
    """After task 0: k = number of prefix sums of the normalised energies below eps (the crossing component is
    not kept); the protected basis is the first max(k, 1) left singular vectors. (Where k >= d / 2 the authors'
    DualGPM labels that basis a free space and then fails an assertion; here it stays a protected basis and
    :meth:`SubspaceMemory.update` stores its complement as the free space, as it does after later tasks.)"""
    u, s = signed_svd(cov)
    e = energies(s, energy_on)
    k = int((torch.cumsum(e / e.sum(), 0) < eps).sum())
    return u[:, :max(k, 1)]


def update_remove(basis: torch.Tensor, cov: torch.Tensor, eps: float, energy_on: str) -> torch.Tensor:
    """Grow a protected basis M: with total = energy of C and (U', s) the SVD of C - M M^T C, start at
    acc = (total - energy(s)) / total and append U'_i while acc < eps (acc += energy(s_i) / total: the crossing
    component is kept); at most d columns."""
    c = cov.double()
    b = basis.double()
    total = energies(signed_svd(c)[1], energy_on).sum()
    u, s = signed_svd(c - b @ (b.T @ c))
    ratio = energies(s, energy_on) / total
    acc = float((total - energies(s, energy_on).sum()) / total)
    r = 0
    for value in ratio.tolist():
        if acc >= eps:
            break
        acc += value
        r += 1
    if r == 0:
        return b
    return torch.cat([b, u[:, :r]], dim=1)[:, :c.shape[0]]


def update_retain(basis: torch.Tensor, cov: torch.Tensor, eps: float, energy_on: str) -> torch.Tensor:
    """Shrink a free-space basis F: (U', s) the SVD of F F^T C, acc = energy(s) / total; count r steps while
    acc >= 1 - eps (acc -= energy(s_i) / total); F = first (cols - r) left singular vectors of F - U'_r U'_r^T F."""
    c = cov.double()
    f = basis.double()
    total = energies(signed_svd(c)[1], energy_on).sum()
    u, s = signed_svd(f @ (f.T @ c))
    ratio = energies(s, energy_on) / total
    acc = float(energies(s, energy_on).sum() / total)
    r = 0
    for value in ratio.tolist():
        if acc < 1 - eps:
            break
        acc -= value
        r += 1
    if r == 0:
        return f
    ur = u[:, :r]
    v, _ = signed_svd(f - ur @ (ur.T @ f), full=True)
    return v[:, :f.shape[1] - r]


def complement(basis: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the orthogonal complement of ``basis``'s columns (the remaining left singular
    vectors of its full SVD)."""
    u, _ = signed_svd(basis, full=True)
    return u[:, basis.shape[1]:]


class SubspaceMemory(nn.Module):
    """Per LoRA'd block: basis ``(d, d)`` (its first ``cols[i]`` columns hold B, the rest zero) and type
    (``NONE`` before the first update, ``REMOVE``, ``RETAIN``); ``tasks`` counts the updates. Fixed shapes, so
    the state loads into a fresh module (checkpoints, SIGKILL + resume)."""

    def __init__(self, layers: int, dim: int, energy_on: str, memory: str) -> None:
        super().__init__()
        if memory not in MEMORIES:
            raise ValueError(f"method.memory must be one of {', '.join(MEMORIES)}, got {memory!r}")
        energies(torch.ones(1), energy_on)  # validates the name
        self.energy_on, self.memory = energy_on, memory
        self.register_buffer("basis", torch.zeros(layers, dim, dim))
        self.register_buffer("cols", torch.zeros(layers, dtype=torch.long))
        self.register_buffer("kind", torch.zeros(layers, dtype=torch.long))
        self.register_buffer("tasks", torch.zeros((), dtype=torch.long))

    def get(self, layer: int) -> tuple[torch.Tensor | None, int]:
        """(basis ``(d, m)`` float32 on the CPU, type) of one layer; (None, NONE) before the first update."""
        kind = int(self.kind[layer])
        if kind == NONE:
            return None, NONE
        return self.basis[layer, :, :int(self.cols[layer])].cpu(), kind

    def projection(self, layer: int) -> torch.Tensor | None:
        b, _ = self.get(layer)
        return None if b is None else b @ b.T

    def _set(self, layer: int, basis: torch.Tensor, kind: int) -> None:
        m = basis.shape[1]
        self.basis[layer].zero_()
        self.basis[layer, :, :m] = basis.to(self.basis)
        self.cols[layer] = m
        self.kind[layer] = kind

    @torch.no_grad()
    def update(self, covariances: list[torch.Tensor], eps: float) -> None:
        """The memory update after a task from each layer's input covariance (with the task's trained branch)."""
        d = self.basis.shape[1]
        for i, cov in enumerate(covariances):
            basis, kind = self.get(i)
            if kind == NONE:
                basis, kind = first_basis(cov, eps, self.energy_on), REMOVE
            elif kind == REMOVE:
                basis = update_remove(basis, cov, eps, self.energy_on)
            else:
                basis = update_retain(basis, cov, eps, self.energy_on)
            # DualGPM: a protected space above half the inputs is stored as its (smaller) free complement
            if self.memory == "dualgpm" and kind == REMOVE and basis.shape[1] > d / 2:
                basis, kind = complement(basis), RETAIN
            self._set(i, basis, kind)
        self.tasks += 1

    def summary(self) -> str:
        return ", ".join(f"{int(c)} {KINDS[int(k)]}" for c, k in zip(self.cols, self.kind))
