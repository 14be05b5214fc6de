"""S5: regression sufficient statistics of COAR's mask design (ALGORITHMS.md 5.2).

Rows are keep-masks x in {0,1}^C with one output y per example [N]. Kept per fold (mask i falls
in fold i mod K), in float64: X1^T X1 and X1^T Y with X1 = [x, 1] (the intercept) and Y^T Y, for
ordinary or ridge least squares with a held-out error per fold (cross-validated ridge); and the
per-component sums behind the difference-of-means estimator w_c = E[y | x_c = 1] - E[y | x_c = 0],
which needs no C x C system. Nothing grows with the number of masks; mergeable by addition.

Ridge shrinks towards a prior ``p`` [C, N] (zero by default): minimise
||y - b - X w||^2 + lam * s * ||w - p||^2, s = the mean diagonal of X^T X (so lam is unitless)."""

from __future__ import annotations

import torch

from ..core.errors import InputError
from .base import Statistic


class AblationSums(Statistic):
    def __init__(self, num_components: int, num_examples: int, gram: bool = True, folds: int = 1):
        if folds < 1 or (folds > 1 and not gram):
            raise InputError(
                f"AblationSums needs folds >= 1, and the Gram matrix for folds > 1 (got {folds})"
            )
        self.num_components, self.num_examples, self.gram = (
            int(num_components),
            int(num_examples),
            gram,
        )
        c, n, k = self.num_components, self.num_examples, int(folds)
        self.count = torch.zeros(k, dtype=torch.float64)
        self.xty = torch.zeros(k, c + 1, n, dtype=torch.float64)  # [x, 1]^T y
        self.yty = torch.zeros(k, n, dtype=torch.float64)
        self.xtx = (
            torch.zeros(k, c + 1, c + 1, dtype=torch.float64) if gram else torch.zeros(k, 0, 0)
        )
        self.kept = torch.zeros(c, dtype=torch.float64)  # masks keeping c

    @property
    def folds(self) -> int:
        return self.count.shape[0]

    @property
    def masks_seen(self) -> int:
        return int(self.count.sum())

    def update(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, first: int | None = None
    ) -> None:
        """``x``: keep masks [M, C]; ``labels``: the outputs y [M, N] under them; ``first``: the
        index of the first mask (fold of mask i = i mod folds; default: continue the count)."""
        y = labels
        if (
            x.ndim != 2
            or x.shape[1] != self.num_components
            or y is None
            or y.shape != (x.shape[0], self.num_examples)
        ):
            raise InputError(
                f"AblationSums wants masks [M, {self.num_components}] and outputs "
                f"[M, {self.num_examples}], got {tuple(x.shape)} and "
                f"{None if y is None else tuple(y.shape)}"
            )
        if not torch.isfinite(y).all():
            raise InputError("NaN or Inf in the masked outputs")
        self.to(x.device)
        first = self.masks_seen if first is None else int(first)
        fold = (torch.arange(x.shape[0], device=x.device) + first) % self.folds
        x1 = torch.cat(
            [x.double(), torch.ones(x.shape[0], 1, dtype=torch.float64, device=x.device)], 1
        )
        y = y.double()
        self.kept += x1[:, :-1].sum(0)
        for f in range(self.folds):
            rows = fold == f
            if not rows.any():
                continue
            xf, yf = x1[rows], y[rows]
            self.count[f] += xf.shape[0]
            self.xty[f] += xf.T @ yf
            self.yty[f] += (yf * yf).sum(0)
            if self.gram:
                self.xtx[f] += xf.T @ xf

    def merge(self, other: AblationSums) -> AblationSums:
        self._check_merge(other)
        for key in ("count", "xty", "yty", "xtx", "kept"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        return self

    def all_reduce(self, comm) -> None:
        """Every accumulator is a sum over masks: one all-reduce."""
        self._sum_state(comm)

    def state_dict(self):
        return {
            "count": self.count,
            "xty": self.xty,
            "yty": self.yty,
            "xtx": self.xtx,
            "kept": self.kept,
        }

    def _solve(self, xtx, xty, ridge: float, prior) -> torch.Tensor:
        """[C + 1, N]: weights then intercept. Without a ridge, the minimum-norm least-squares
        solution: unique even with fewer masks than components, where a pivoted solver's
        answer (lstsq's default) changes with the thread count."""
        if ridge == 0:
            return torch.linalg.pinv(xtx, hermitian=True, rtol=1e-10) @ xty
        scale = float(xtx.diagonal()[:-1].mean().clamp_min(1))
        reg = torch.full((xtx.shape[0],), ridge * scale, dtype=xtx.dtype, device=xtx.device)
        reg[-1] = 0.0
        rhs = (
            xty
            if prior is None
            else xty + torch.cat([prior * ridge * scale, torch.zeros_like(xty[-1:])])
        )
        return torch.linalg.solve(xtx + torch.diag(reg), rhs)

    def _prior(self, prior):
        if prior is None:
            return None
        p = prior.to(self.xty.device, torch.float64)
        if p.shape != (self.num_components, self.num_examples):
            raise InputError(
                f"ridge prior must be [{self.num_components}, {self.num_examples}], "
                f"got {tuple(p.shape)}"
            )
        return p

    def least_squares(self, ridge: float = 0.0, prior: torch.Tensor | None = None):
        """(W [C, N], b [N]) of (ridge) least squares on every mask seen."""
        if not self.gram:
            raise InputError("least squares needs AblationSums(gram=True)")
        if ridge < 0:
            raise InputError(f"ridge must be >= 0, got {ridge}")
        sol = self._solve(self.xtx.sum(0), self.xty.sum(0), float(ridge), self._prior(prior))
        return sol[:-1], sol[-1]

    def heldout_error(self, ridge: float, prior: torch.Tensor | None = None) -> torch.Tensor:
        """Per example, the K-fold cross-validated mean squared error [N] of ridge ``ridge``."""
        if self.folds < 2 or bool((self.count == 0).any()):
            raise InputError("cross-validation needs folds >= 2, each with masks")
        prior = self._prior(prior)
        xtx, xty = self.xtx.sum(0), self.xty.sum(0)
        err = torch.zeros(self.num_examples, dtype=torch.float64, device=xty.device)
        for f in range(self.folds):
            sol = self._solve(xtx - self.xtx[f], xty - self.xty[f], ridge, prior)
            # ||y - X1 s||^2 from the held-out fold's sums, per example
            err += self.yty[f] - 2 * (sol * self.xty[f]).sum(0) + (sol * (self.xtx[f] @ sol)).sum(0)
        return err / self.count.sum()

    def cross_validated(
        self,
        grid=(0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
        prior: torch.Tensor | None = None,
    ):
        """(W, b, chosen ridge [N]): per example, the ridge of ``grid`` with the lowest held-out
        error, then refit on every mask."""
        errors = torch.stack([self.heldout_error(r, prior) for r in grid])  # [G, N]
        best = errors.argmin(0)
        w = torch.empty(
            self.num_components, self.num_examples, dtype=torch.float64, device=errors.device
        )
        b = torch.empty(self.num_examples, dtype=torch.float64, device=errors.device)
        for g in best.unique().tolist():
            cols = best == g
            wg, bg = self.least_squares(grid[g], prior)
            w[:, cols], b[cols] = wg[:, cols], bg[cols]
        return w, b, torch.tensor(grid, dtype=torch.float64)[best.cpu()]

    def difference_of_means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [C, N], mean y [N]): E[y | kept] - E[y | ablated] per component."""
        xty = self.xty.sum(0)
        n, total = float(self.count.sum()), xty[-1:]
        kept = self.kept.unsqueeze(1)
        if torch.any((kept <= 0) | (kept >= n)):
            raise InputError(
                "difference of means needs every component both kept and ablated in some mask"
            )
        kept_mean = xty[:-1] / kept
        ablated_mean = (total - xty[:-1]) / (n - kept)
        return kept_mean - ablated_mean, total[0] / n
