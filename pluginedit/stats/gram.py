"""S3: streaming input Gram of a linear layer, or of the unfolded input patches of a conv.

Kept as (count, mean [D], scatter [D, D] = sum (p - mean)(p - mean)^T) in float64 and merged with
Chan's formula, so the centred covariance does not cancel catastrophically when means are large.
The hot loop is the ``gram`` kernel op (implicit im2col, chunked over samples)."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..core.errors import InputError
from .base import Statistic, check_activations


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))


class Gram(Statistic):
    """Gram of input rows p (width ``dim``): linear inputs [..., D], or conv inputs [N, C, H, W]
    unfolded in conv-weight order (c, kh, kw) when ``kernel_size`` is given. ``update``
    accumulates in place: ``state_dict()`` holds the live tensors (clone them for a snapshot)."""

    def __init__(
        self,
        dim: int,
        kernel_size=None,
        stride=1,
        padding=0,
        dilation=1,
        chunk: int = 64,
        backend: str | None = None,
    ):
        self.dim, self.chunk, self._backend = int(dim), int(chunk), backend
        self.conv = (
            None
            if kernel_size is None
            else dict(
                kernel_size=_pair(kernel_size),
                stride=_pair(stride),
                padding=_pair(padding),
                dilation=_pair(dilation),
            )
        )
        self.count = torch.zeros((), dtype=torch.float64)
        self.mean = torch.zeros(self.dim, dtype=torch.float64)
        self.scatter = torch.zeros(self.dim, self.dim, dtype=torch.float64)

    @classmethod
    def for_module(cls, module: nn.Module, **kw) -> Gram:
        """The Gram of the inputs of a Linear or (groups=1, numeric padding) Conv2d."""
        if isinstance(module, nn.Linear):
            return cls(module.in_features, **kw)
        if isinstance(module, nn.Conv2d):
            if (
                module.groups != 1
                or isinstance(module.padding, str)
                or module.padding_mode != "zeros"
            ):
                raise InputError(
                    "Gram supports Conv2d with groups=1 and numeric zero padding only, "
                    f"got groups={module.groups}, padding={module.padding!r}"
                )
            kernel_h, kernel_w = module.kernel_size
            return cls(
                module.in_channels * kernel_h * kernel_w,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                **kw,
            )
        raise InputError(f"Gram needs a Linear or Conv2d module, got {type(module).__name__}")

    def update(self, x: torch.Tensor, labels=None) -> None:
        check_activations(x, "Gram inputs")
        width = (
            x.shape[1] * self.conv["kernel_size"][0] * self.conv["kernel_size"][1]
            if self.conv
            else x.shape[-1]
        )
        if (self.conv and x.ndim != 4) or width != self.dim:
            raise InputError(f"Gram of width {self.dim} got inputs of shape {tuple(x.shape)}")
        self.backend, fn = ops.resolve("gram", x, self._backend)
        x = x.detach()  # a statistic is not differentiated (see ClassMoments.update)
        g, s, n = fn(x, **self.conv, chunk=self.chunk) if self.conv else fn(x)
        if n == 0:
            return
        self.to(x.device)
        self._fold_raw(float(n), s.double() / n, g)

    def _fold_raw(self, n_b: float, mean_b: torch.Tensor, g: torch.Tensor) -> None:
        """Chan's update from a batch's raw Gram g = sum p p^T (fp32 or fp64), in place:
        scatter += g - n_b mean_b mean_b^T + (n_a n_b / n) delta delta^T as one add and one
        rank-2 update: two passes over D x D and no new D x D tensor (a fold written as whole-matrix
        expressions made one per term; at ResNet-50's D = 4608 it took 6x the Gram's own GEMM)."""
        n_a = float(self.count)
        n = n_a + n_b
        delta = mean_b - self.mean
        u = torch.stack([mean_b, delta], 1)  # [D, 2]
        v = torch.stack([mean_b * -n_b, delta * (n_a * n_b / n)])  # [2, D]
        self.scatter.add_(g).addmm_(u, v)
        self.mean = self.mean + delta * (n_b / n)
        self.count = torch.tensor(n, dtype=torch.float64)

    def to(self, device) -> Gram:
        """Mean and scatter follow the activations; the count stays a host scalar (it is known
        from shapes, so reading it never waits for the device)."""
        self.mean, self.scatter = self.mean.to(device), self.scatter.to(device)
        self.count = self.count.cpu()
        return self

    def _fold(self, n_b: float, mean_b: torch.Tensor, scatter_b: torch.Tensor) -> None:
        n_a = float(self.count)
        n = n_a + n_b
        delta = mean_b - self.mean
        self.scatter = self.scatter + scatter_b + torch.outer(delta, delta) * (n_a * n_b / n)
        self.mean = self.mean + delta * (n_b / n)
        self.count = torch.tensor(n, dtype=torch.float64)

    def merge(self, other: Gram) -> Gram:
        self._check_merge(other)
        if float(other.count) > 0:
            self._fold(float(other.count), other.mean, other.scatter)
        return self

    def all_reduce(self, comm) -> None:
        """Chan's formula over ranks with two all-reduces: the counts and sums give the overall
        mean, then each rank's scatter about that mean is summed."""
        n_r = float(self.count)
        got = comm.sum({"count": self.count.reshape(1), "sum": self.mean * n_r})
        n = float(got["count"])
        if n == 0:
            return
        mean = got["sum"] / n
        delta = self.mean - mean
        scatter = comm.sum({"scatter": self.scatter + torch.outer(delta, delta) * n_r})["scatter"]
        self.count, self.mean, self.scatter = torch.tensor(n, dtype=torch.float64), mean, scatter

    def state_dict(self):
        return {"count": self.count, "mean": self.mean, "scatter": self.scatter}

    def _n(self) -> float:
        if float(self.count) <= 0:
            raise InputError("the Gram statistic has seen no samples")
        return float(self.count)

    def second_moment(self) -> torch.Tensor:
        """E[p p^T] (uncentred), [D, D] float64."""
        return self.scatter / self._n() + torch.outer(self.mean, self.mean)

    def covariance(self) -> torch.Tensor:
        """E[(p - mu)(p - mu)^T] (centred; the BN-centred Q-tilde of ModHiFi App. D.2)."""
        return self.scatter / self._n()

    def matrix(self, centred: bool) -> torch.Tensor:
        return self.covariance() if centred else self.second_moment()
