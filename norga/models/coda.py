"""CODA-Prompt's decomposed prompt: in each prompted block a pool of prompt components, each with a key and an
attention vector; a sample's prompt is the sum of the components weighted by how well its query, seen through
each component's attention vector, matches the component's key (docs/algorithm.md#coda-prompt).

Per prompted block, with N components of length L in a ViT of width d:

    P (N, L, d)   components        K (N, d)   keys        A (N, d)   attention vectors

    alpha[b, n] = cos(q_b * A_n, K_n)                 (signed: no softmax, no clipping)
    prompt_b    = sum over n of alpha[b, n] P_n       (L, d): first L/2 rows key prefix, last L/2 value prefix

Task t owns the slice of rows ``[t N', (t+1) N')`` with ``N' = N // num_tasks``. All N rows exist from the
start, so a checkpoint always holds every slice; a slice stays zero until its task starts, when it is drawn
by Gram-Schmidt: normal vectors made orthogonal to every earlier row (learned ones included) and of unit
norm (for P over all of its L * d entries). While task t trains, the rows of earlier tasks enter the forward
detached (exactly zero gradient) and the rows of later tasks not at all.
"""

from __future__ import annotations

import torch
from torch import nn

from norga.models.attention import Prefix

# a norm below this counts as zero when dividing by it (torch.nn.functional.normalize's default)
_EPS = 1e-12


def orthonormal_rows(earlier: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` random unit rows ``(count, D)``, orthogonal to each other and to every row of ``earlier``
    ``(s, D)``: Gram-Schmidt of standard normal draws against ``earlier`` and each other.

    Computed as the QR decomposition of ``[earlier; draws]^T`` in float64 (Householder: the same vectors as
    Gram-Schmidt, with the sign fixed so each new row points along its draw, and numerically orthogonal even
    when the learned ``earlier`` rows are far from orthogonal). Draws come from ``generator`` on the CPU, so
    the result does not depend on the device.
    """
    s, dim = earlier.shape
    if s + count > dim:
        raise ValueError(f"cannot draw {count} rows orthogonal to {s} others in {dim} dimensions")
    draws = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    stacked = torch.cat([earlier.detach().double().cpu(), draws])
    q, r = torch.linalg.qr(stacked.T)
    # the sign that makes <new row, its draw> = R[k, k] positive: what Gram-Schmidt gives
    signs = torch.sign(torch.diagonal(r)[s:])
    return (q[:, s:] * torch.where(signs == 0, 1.0, signs)).T.to(earlier.dtype).to(earlier.device)


def component_weights(query: torch.Tensor, keys: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """``alpha[l, b, n] = cos(q_b * A_ln, K_ln)`` for queries ``(B, d)`` and keys, attention ``(layers, n, d)``.

    Written as matrix products (``(q * A_n) . K_n = q . (A_n * K_n)``, ``|q * A_n|^2 = q^2 . A_n^2``) so the
    ``(layers, B, n, d)`` tensor of attended queries is never built."""
    dot = torch.einsum("bd,lnd->lbn", query, attention * keys)
    attended_sq = torch.einsum("bd,lnd->lbn", query.square(), attention.square())
    # clamp before the square root: its gradient at 0 is infinite
    attended = attended_sq.clamp_min(_EPS ** 2).sqrt()
    key_norm = keys.norm(dim=-1).clamp_min(_EPS).unsqueeze(1)
    return dot / (attended * key_norm)


def orthogonality_penalty(rows: torch.Tensor) -> torch.Tensor:
    """``mean((R R^T - I)^2)`` of rows ``(n, D)``: zero when the rows are orthonormal."""
    gram = rows @ rows.T
    return (gram - torch.eye(len(rows), dtype=rows.dtype, device=rows.device)).square().mean()


class CodaPrompt(nn.Module):
    """The decomposed prompts of blocks ``layers``: ``pool_size`` components split evenly over ``num_tasks``.

    Args:
        layers: indices of the prompted blocks.
        pool_size: N, components per block; task t owns ``pool_size // num_tasks`` of them.
        num_tasks: how many tasks share the pool.
        length: L, prompt length (even: L/2 key prefixes, L/2 value prefixes).
        dim: the backbone's width d (queries, keys and attention vectors have it too).
        num_heads: the backbone's attention heads (prefixes are split into heads like keys and values).
    """

    def __init__(self, layers: list[int], pool_size: int, num_tasks: int, length: int, dim: int,
                 num_heads: int) -> None:
        super().__init__()
        if length % 2:
            raise ValueError(f"the prompt length must be even (its first half becomes the key prefix, its second "
                             f"half the value prefix), got {length} (method.prompt_length)")
        per_task = pool_size // num_tasks
        if per_task < 1:
            raise ValueError(f"{pool_size} components cannot be shared by {num_tasks} tasks: the pool needs at "
                             f"least one component per task (method.pool_size >= {num_tasks})")
        if per_task * num_tasks > dim:
            raise ValueError(f"{per_task * num_tasks} components ({per_task} per task) cannot have mutually "
                             f"orthogonal keys in the backbone's {dim} dimensions: choose method.pool_size <= {dim}")
        if dim % num_heads:
            raise ValueError(f"width {dim} does not split into {num_heads} heads")
        self.layers = list(layers)
        self.per_task = per_task
        self.num_heads = num_heads
        n = len(self.layers)
        self.components = nn.Parameter(torch.zeros(n, pool_size, length, dim))
        self.keys = nn.Parameter(torch.zeros(n, pool_size, dim))
        self.attention = nn.Parameter(torch.zeros(n, pool_size, dim))
        # how many tasks' slices have been drawn: evaluation uses exactly those
        self.register_buffer("started", torch.zeros((), dtype=torch.long))

    @property
    def pool_size(self) -> int:
        return self.components.shape[1]

    @property
    def tasks_started(self) -> int:
        return int(self.started)

    def task_rows(self, task: int) -> slice:
        """The rows task ``task`` owns."""
        return slice(task * self.per_task, (task + 1) * self.per_task)

    @torch.no_grad()
    def start_task(self, task: int, generator: torch.Generator | None = None) -> None:
        """Draw task ``task``'s components, keys and attention vectors by Gram-Schmidt against all earlier rows
        (:func:`orthonormal_rows`), in every block. Drawing again for the same task gives the same rows for the
        same generator state. Only the next task can be drawn, or the latest again (an earlier one would no
        longer be orthogonal to the rows drawn after it)."""
        if task not in (self.tasks_started - 1, self.tasks_started):
            raise ValueError(f"{self.tasks_started} tasks have started: task {task} cannot be drawn now")
        rows = self.task_rows(task)
        for tensor in (self.components, self.keys, self.attention):
            for layer in range(len(self.layers)):
                flat = tensor[layer].flatten(1)  # P: one row of L * d per component
                new = orthonormal_rows(flat[:rows.start], self.per_task, generator)
                tensor[layer, rows] = new.view_as(tensor[layer, rows])
        self.started.fill_(max(self.tasks_started, task + 1))

    def used(self, task: int, train: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(P, K, A)`` over the rows of tasks ``0..task``; with ``train`` the earlier tasks' rows detached
        (frozen: exactly zero gradient) and only task ``task``'s live."""
        rows = self.task_rows(task)
        tensors = (self.components, self.keys, self.attention)
        if not train:
            return tuple(t[:, :rows.stop] for t in tensors)
        return tuple(torch.cat([t[:, :rows.start].detach(), t[:, rows]], dim=1) for t in tensors)

    def prompts(self, query: torch.Tensor, task: int, train: bool = False) -> torch.Tensor:
        """Each sample's prompt in each block, ``(layers, B, L, d)``, from the rows of tasks ``0..task``."""
        p, k, a = self.used(task, train)
        alpha = component_weights(query.float(), k, a)
        return torch.einsum("lbn,lnkd->lbkd", alpha, p)

    def prefixes(self, query: torch.Tensor, task: int, train: bool = False) -> dict[int, Prefix]:
        """Per block, the key prefix (first half of the prompt) and value prefix (second half), split into
        heads: ``(B, heads, L/2, head_dim)`` each."""
        p = self.prompts(query, task, train)
        n, b, length, dim = p.shape
        # (layers, B, [key, value], L/2, heads, head_dim) -> (layers, [key, value], B, heads, L/2, head_dim)
        kv = p.reshape(n, b, 2, length // 2, self.num_heads, dim // self.num_heads).permute(0, 2, 1, 4, 3, 5)
        return {layer: Prefix(key=kv[i, 0], value=kv[i, 1]) for i, layer in enumerate(self.layers)}

    def orthogonality(self, task: int) -> torch.Tensor:
        """The unweighted orthogonality penalty of training task ``task``: summed over blocks,
        ``mean((K K^T - I)^2) + mean((A A^T - I)^2) + mean((P P^T - I)^2)`` (P flattened to rows of L * d),
        over the rows the training forward uses (earlier tasks' detached)."""
        p, k, a = self.used(task, train=True)
        return sum(orthogonality_penalty(k[i]) + orthogonality_penalty(a[i]) + orthogonality_penalty(p[i].flatten(1))
                   for i in range(len(self.layers)))
