"""Which KV groups and FFN channels of a decoder block go, and the refit of what stays.

A unit (a KV group: the o_proj columns of its query heads; an FFN channel: one down_proj column)
is a set S of input columns of the block's output projection W [out, in], whose input Gram is G.

* ``modhifi``: the ModHiFi subset-fidelity loss of removing S when the kept inputs are refit
  by delta* (ALGORITHMS.md 4.3; for a Linear, delta* is the least-squares refit):
  E||Y - Y'||^2 = tr(W_S (H_SS)^-1 W_S^T) with H the inverse of the (ridged) Gram of the kept
  inputs. Units are removed greedily, a few per step (Optimal-Brain-Surgeon style): after each
  step both H and the refit weights are downdated in place (H -= H_:R H_RR^-1 H_R:,
  W -= W_:R H_RR^-1 H_R:), one rank-|R| GEMM each, no re-inversion and no re-indexing; the
  weights left at the end are exactly the least-squares refit of the kept inputs.
  With a target that differs from the layer's own output (the dense model's, ``cross``), the
  greedy starts from the full refit W* = W C G^-1 (C: cross Gram E[a_dense a^T]): the loss of
  removing S from W* is the same trace with W* in place of W (a Schur-complement identity), so
  one procedure serves both.
* ``magnitude``: the L2 norm of every weight the unit owns (q/k/v rows and o columns; gate/up
  rows and the down column).
* ``wanda``: Wanda's |W_ij| ||x_j|| summed over the unit's output-projection weights
  (structured), ||x_j|| from the Gram's diagonal.

Scores are computed on the host in float64."""

from __future__ import annotations

import torch

from ...core.errors import EditError
from ...graph.decoder import DecoderBlock, matrix
from ...linalg import DEFAULT_RIDGE, regularised_cholesky

METHODS = ("modhifi", "magnitude", "wanda")


def units_of(block: DecoderBlock, kind: str) -> torch.Tensor:
    """[units, columns per unit]: the output projection's input columns of each unit."""
    if kind == "attn":
        return block.group_columns(range(block.num_kv_heads)).reshape(block.num_kv_heads, -1)
    return torch.arange(block.ffn_width)[:, None]


def _losses(w: torch.Tensor, h: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """tr(W_S (H_SS)^-1 W_S^T) of every unit S (rows of ``units``)."""
    if units.shape[1] == 1:  # single columns: no solve
        c = units[:, 0]
        return w[:, c].square().sum(0) / h[c, c].clamp_min(torch.finfo(h.dtype).tiny)
    hs = h[units[:, :, None], units[:, None, :]]  # [U, s, s]
    ws = w[:, units].permute(1, 0, 2)  # [U, out, s]
    x = torch.linalg.solve(hs, ws.transpose(1, 2))  # [U, s, out]
    return (ws.transpose(1, 2) * x).sum((1, 2))


def inverse_gram(gram: torch.Tensor, ridge: float) -> torch.Tensor:
    """(G + lam I)^-1 in float64 (the ridge grown for an ill-conditioned Gram)."""
    chol = regularised_cholesky(gram.double(), ridge, what="decoder unit scores")[0]
    return torch.cholesky_inverse(chol)


def full_refit(w: torch.Tensor, cross: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """W* = W C H: every input kept, regressed onto the target W a_target (C = E[a_target a^T])."""
    return w @ cross @ h


def obs_removal(
    w: torch.Tensor, h: torch.Tensor, units: torch.Tensor, remove: int, step: int
) -> tuple[list[int], list[float], torch.Tensor]:
    """(units removed in order, the loss each step added (shared by its units), refit weights
    [out, in] with the removed columns zero). ``w`` [out, in] and ``h`` [in, in] are float64;
    both are downdated in place and, once a quarter of their columns is gone, compacted to the
    columns still kept, so the work is about that of the kept part, not of the whole."""
    full, cols = w, torch.arange(w.shape[1])  # cols: the original column of each of w's
    where = torch.full((w.shape[1],), -1, dtype=torch.long)  # original column -> position
    where[cols] = torch.arange(len(cols))
    alive = torch.ones(len(units), dtype=torch.bool)
    removed, losses = [], []
    while len(removed) < remove:
        idx = alive.nonzero().squeeze(1)
        local = where[units[idx]]
        loss = _losses(w, h, local)
        order = loss.argsort()[: min(step, remove - len(removed))]
        take, r = idx[order], local[order].reshape(-1)
        hr = h[r]  # [R, in]
        sol = torch.linalg.solve(hr[:, r], hr)  # H_RR^-1 H_R:
        added = float((w[:, r] * torch.linalg.solve(hr[:, r], w[:, r].T).T).sum())
        w.addmm_(w[:, r], sol, alpha=-1)  # in place: the update is bound by memory traffic
        h.addmm_(hr.T, sol, alpha=-1)
        w[:, r] = 0
        alive[take] = False
        removed += take.tolist()
        losses += [max(added, 0.0) / len(take)] * len(take)
        where[cols[r]] = -2  # removed for good
        if int((where[cols] == -2).sum()) * 4 >= len(cols):
            k = (where[cols] != -2).nonzero().squeeze(1)
            w, h, cols = w[:, k].contiguous(), h[k[:, None], k], cols[k]  # one copy of h
            where[cols] = torch.arange(len(cols))
    out = torch.zeros_like(full)
    out[:, cols] = w
    return removed, losses, out


def unit_scores(block: DecoderBlock, kind: str, method: str, gram: torch.Tensor) -> torch.Tensor:
    """[units] importance of the uncompensated baselines (higher = more important)."""
    units = units_of(block, kind)
    out = matrix(block.o if kind == "attn" else block.ffn_out).detach().double().cpu()
    if method == "wanda":
        norms = gram.diagonal().clamp_min(0).sqrt()
        return (out.abs().sum(0) * norms)[units].sum(1)
    energy = out.square().sum(0)[units].sum(1)
    if kind == "attn":
        rows_q = block.rows("q").detach().double().cpu().square().sum(1)[units].sum(1)
        kv = block.kv_rows(range(block.num_kv_heads)).reshape(block.num_kv_heads, -1)
        rows_kv = sum(block.rows(m).detach().double().cpu().square().sum(1) for m in "kv")
        return (energy + rows_q + rows_kv[kv].sum(1)).sqrt()
    rows = sum(matrix(m).detach().double().cpu().square().sum(1) for m in block.ffn_in)
    return (energy + rows).sqrt()


def step_size(remove: int, rounds: int) -> int:
    return max(1, -(-remove // max(rounds, 1)))


@torch.no_grad()
def prune_kind(
    block: DecoderBlock,
    kind: str,
    method: str,
    gram: torch.Tensor,
    remove: int,
    rounds: int,
    ridge: float = DEFAULT_RIDGE,
    cross: torch.Tensor | None = None,
    compensate: bool = True,
    refit_all: bool = False,
) -> tuple[list[int], list[float]]:
    """Choose the ``remove`` units of ``kind`` and, with ``compensate``, write the refit of the
    output projection (removed columns zeroed; the surgery cuts them). ``cross``: E[a_t a^T]
    of the target inputs a_t with this chain's a (None: the layer's own output is the target).
    ``refit_all``: write the refit onto the ``cross`` target even when nothing goes.
    Returns (units removed, their scores or losses)."""
    if remove <= 0 and not (refit_all and cross is not None):
        return [], []
    linear = block.o if kind == "attn" else block.ffn_out
    units = units_of(block, kind)
    w = matrix(linear).detach().double().cpu()
    if method == "modhifi" or compensate:
        h = inverse_gram(gram, ridge)
        if cross is not None:
            w = full_refit(w, cross.double(), h)
    if remove <= 0:
        removed, scores, new = [], [], w
    elif method == "modhifi":
        step = step_size(remove, rounds)
        removed, scores, new = obs_removal(w, h, units, remove, step)  # h not used after
    else:
        s = unit_scores(block, kind, method, gram)
        removed = s.argsort()[:remove].tolist()
        scores = [float(s[i]) for i in removed]
        if compensate:
            new = obs_removal(w, h, units[removed], len(removed), len(removed))[2]
    if compensate:
        if not torch.isfinite(new).all():
            raise EditError(f"{linear}: the compensation produced NaN or Inf")
        matrix(linear).copy_(new.to(linear.weight))
    return removed, scores


@torch.no_grad()
def loss_curve(
    w: torch.Tensor, gram: torch.Tensor, units: torch.Tensor, upto: int, rounds: int, ridge: float
) -> torch.Tensor:
    """[upto + 1] cumulative compensated loss of removing 0, 1, ... ``upto`` units greedily,
    made non-decreasing in its increments (so a global ranking takes a block's units in order)."""
    if upto <= 0:
        return torch.zeros(1, dtype=torch.float64)
    h = inverse_gram(gram, ridge)
    _, losses, _ = obs_removal(w.double().clone(), h, units, upto, step_size(upto, rounds))
    inc = torch.tensor(losses, dtype=torch.float64).cummax(0).values
    return torch.cat([torch.zeros(1, dtype=torch.float64), inc.cumsum(0)])
