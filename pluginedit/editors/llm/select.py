"""Which KV groups and FFN channels of a decoder block go, and the refit of what stays.

A unit (a KV group: the o_proj columns of its query heads; an FFN channel: one down_proj column)
is a set S of input columns of the block's output projection W [out, in], whose input Gram is G.

* ``modhifi``: the ModHiFi subset-fidelity loss of removing S when the kept inputs are refit
  by delta* (ALGORITHMS.md 4.3; for a Linear, delta* is the least-squares refit):
  E||Y - Y'||^2 = tr(W_S (H_SS)^-1 W_S^T) with H the inverse of the (ridged) Gram of the kept
  inputs, i.e. E||Y||^2 (1 - FS(kept \\ S)). Units are removed greedily in ``rounds``: after
  each round H is downdated to the inputs still kept (H_KK - H_KR H_RR^-1 H_RK), so correlated
  units are not all removed on the strength of each other.
* ``magnitude``: the L2 norm of every weight the unit owns (q/k/v rows and o columns; gate/up
  rows and the down column).
* ``wanda``: Wanda's |W_ij| ||x_j|| summed over the unit's output-projection weights
  (structured), ||x_j|| from the Gram's diagonal.

Scores are computed on the host in float64."""

from __future__ import annotations

import torch

from ...core.errors import EditError
from ...graph.decoder import DecoderBlock
from ...linalg import DEFAULT_RIDGE, regularised_cholesky
from ..common.compensate import refit_linear

METHODS = ("modhifi", "magnitude", "wanda")


def _units(block: DecoderBlock, kind: str) -> torch.Tensor:
    """[units, columns per unit]: the output projection's input columns of each unit."""
    if kind == "attn":
        return block.group_columns(range(block.num_kv_heads)).reshape(block.num_kv_heads, -1)
    return torch.arange(block.ffn_width)[:, None]


def _obs_losses(w: torch.Tensor, h: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """tr(W_S (H_SS)^-1 W_S^T) of every unit S (rows of ``units``, indices into h)."""
    hs = h[units[:, :, None], units[:, None, :]]  # [U, s, s]
    ws = w[:, units].permute(1, 0, 2)  # [U, out, s]
    x = torch.linalg.solve(hs, ws.transpose(1, 2))  # [U, s, out]
    return (ws.transpose(1, 2) * x).sum((1, 2))


def modhifi_removal(
    w: torch.Tensor, gram: torch.Tensor, units: torch.Tensor, remove: int, rounds: int, ridge: float
) -> tuple[list[int], list[float]]:
    """(units removed, their losses when removed) by greedy rounds of the compensated loss."""
    chol = regularised_cholesky(gram, ridge, what="decoder unit scores")[0]
    h = torch.cholesky_inverse(chol)
    alive = list(range(len(units)))
    cols = units.reshape(-1).tolist()  # columns still in h, in h's order
    removed, losses = [], []
    per_round = max(1, -(-remove // max(rounds, 1)))
    while len(removed) < remove:
        pos = {c: i for i, c in enumerate(cols)}
        local = torch.tensor([[pos[c] for c in units[u].tolist()] for u in alive])
        loss = _obs_losses(w[:, cols], h, local)
        take = loss.argsort()[: min(per_round, remove - len(removed))].tolist()
        gone = {alive[t] for t in take}
        removed += [alive[t] for t in take]
        losses += [float(loss[t]) for t in take]
        r = local[take].reshape(-1)
        keep = torch.ones(len(cols), dtype=torch.bool)
        keep[r] = False
        k = keep.nonzero().squeeze(1)
        h = h[k][:, k] - h[k][:, r] @ torch.linalg.solve(h[r][:, r], h[r][:, k])
        cols = [cols[i] for i in k.tolist()]
        alive = [u for u in alive if u not in gone]
    return removed, losses


def unit_scores(block: DecoderBlock, kind: str, method: str, gram: torch.Tensor) -> torch.Tensor:
    """[units] importance of the uncompensated baselines (higher = more important)."""
    units = _units(block, kind)
    out = (block.o if kind == "attn" else block.ffn_out).weight.detach().double().cpu()
    if method == "wanda":
        norms = gram.diagonal().clamp_min(0).sqrt()
        return (out.abs().sum(0) * norms)[units].sum(1)
    energy = out.square().sum(0)[units].sum(1)
    if kind == "attn":
        rows_q = block.q.weight.detach().double().cpu().square().sum(1)[units].sum(1)
        kv = block.kv_rows(range(block.num_kv_heads)).reshape(block.num_kv_heads, -1)
        rows_kv = sum(m.weight.detach().double().cpu().square().sum(1) for m in (block.k, block.v))
        return (energy + rows_q + rows_kv[kv].sum(1)).sqrt()
    rows = sum(m.weight.detach().double().cpu().square().sum(1) for m in block.ffn_in)
    return (energy + rows).sqrt()


def choose(
    block: DecoderBlock,
    kind: str,
    method: str,
    gram: torch.Tensor,
    remove: int,
    rounds: int,
    ridge: float = DEFAULT_RIDGE,
) -> tuple[list[int], list[float]]:
    """(units of ``kind`` removed, their scores) for one block."""
    if remove <= 0:
        return [], []
    units = _units(block, kind)
    if method == "modhifi":
        w = (block.o if kind == "attn" else block.ffn_out).weight.detach().double().cpu()
        return modhifi_removal(w, gram, units, remove, rounds, ridge)
    scores = unit_scores(block, kind, method, gram)
    order = scores.argsort()[:remove].tolist()
    return order, [float(scores[i]) for i in order]


@torch.no_grad()
def refit(block: DecoderBlock, kind: str, gram: torch.Tensor, removed: list[int], ridge: float):
    """delta* of the output projection's kept inputs (least squares on the Gram of its inputs);
    the removed columns are zeroed (cut by the surgery). Returns the ridge used."""
    if not removed:
        return 0.0
    linear = block.o if kind == "attn" else block.ffn_out
    units = _units(block, kind)
    keep = torch.ones(linear.in_features, dtype=torch.bool)
    keep[units[removed].reshape(-1)] = False
    new, _, lam = refit_linear(linear.weight.detach().cpu(), gram, keep, ridge)
    if not torch.isfinite(new).all():
        raise EditError(f"{linear}: the compensation produced NaN or Inf")
    linear.weight.copy_(new.to(linear.weight))
    return lam
