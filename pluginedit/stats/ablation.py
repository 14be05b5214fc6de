"""S5: regression sufficient statistics of COAR's mask design (ALGORITHMS.md 5.2).

Rows are keep-masks x in {0,1}^C with one output y per example [N]. Kept: count, X1^T X1 and
X1^T Y with X1 = [x, 1] (the intercept), in float64, for ordinary (optionally ridge) least
squares; and the per-component sums behind the difference-of-means estimator
w_c = E[y | x_c = 1] - E[y | x_c = 0], which needs no C x C system. Mergeable by addition."""
from __future__ import annotations

import torch

from ..core.errors import InputError
from .base import Statistic


class AblationSums(Statistic):
    def __init__(self, num_components: int, num_examples: int, gram: bool = True):
        self.num_components, self.num_examples, self.gram = int(num_components), int(num_examples), gram
        c, n = self.num_components, self.num_examples
        self.count = torch.zeros((), dtype=torch.float64)
        self.xty = torch.zeros(c + 1, n, dtype=torch.float64)          # [x, 1]^T y
        self.xtx = torch.zeros(c + 1, c + 1, dtype=torch.float64) if gram else torch.zeros(0)
        self.kept = torch.zeros(c, dtype=torch.float64)                  # masks keeping c

    def update(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """``x``: keep masks [M, C]; ``labels``: the outputs y [M, N] under them."""
        y = labels
        if x.ndim != 2 or x.shape[1] != self.num_components or y is None or y.shape != (x.shape[0], self.num_examples):
            raise InputError(f"AblationSums wants masks [M, {self.num_components}] and outputs "
                             f"[M, {self.num_examples}], got {tuple(x.shape)} and {None if y is None else tuple(y.shape)}")
        if not torch.isfinite(y).all():
            raise InputError("NaN or Inf in the masked outputs")
        x1 = torch.cat([x.double(), torch.ones(x.shape[0], 1, dtype=torch.float64, device=x.device)], 1)
        self.to(x.device)
        self.count = self.count + x.shape[0]
        self.xty = self.xty + x1.T @ y.double()
        self.kept = self.kept + x1[:, :-1].sum(0)
        if self.gram:
            self.xtx = self.xtx + x1.T @ x1

    def merge(self, other: "AblationSums") -> "AblationSums":
        self._check_merge(other)
        self.count, self.xty, self.kept = self.count + other.count, self.xty + other.xty, self.kept + other.kept
        self.xtx = self.xtx + other.xtx
        return self

    def state_dict(self):
        return {"count": self.count, "xty": self.xty, "xtx": self.xtx, "kept": self.kept}

    def least_squares(self, ridge: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [C, N], b [N]) minimising sum (y - b - w.x)^2 (+ ridge ||w||^2, intercept free)."""
        if not self.gram:
            raise InputError("least squares needs AblationSums(gram=True)")
        a = self.xtx.clone()
        reg = torch.full((a.shape[0],), float(ridge) * float(a.diagonal()[:-1].mean().clamp_min(1)),
                         dtype=a.dtype, device=a.device)
        reg[-1] = 0.0
        a = a + torch.diag(reg)
        sol = torch.linalg.lstsq(a, self.xty).solution if ridge == 0 else torch.linalg.solve(a, self.xty)
        return sol[:-1], sol[-1]

    def difference_of_means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [C, N], mean y [N]): E[y | kept] - E[y | ablated] per component."""
        n, k = float(self.count), self.kept.unsqueeze(1)
        total = self.xty[-1:]
        if torch.any((k <= 0) | (k >= n)):
            raise InputError("difference of means needs every component both kept and ablated in some mask")
        kept_mean = self.xty[:-1] / k
        ablated_mean = (total - self.xty[:-1]) / (n - k)
        return kept_mean - ablated_mean, total[0] / n
