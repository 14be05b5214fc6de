"""Statistics of a layer's (input, output) pairs for ModHiFi, without the Gram of all its inputs.

Both are fed ``(input, output)`` of a Linear or Conv2d (a ``capture.Request`` with
``where="io"``); p is a row of the input (a conv's unfolded patch, in weight order (c, kh, kw)),
y = W p the output without its bias, and the inputs are cut into blocks: a conv's input
channels, ``block`` consecutive features of a Linear (the H*W positions of a flattened channel).

* ``PairStats``: r[c, b] = sum_rows y_c (w_cb . p_b), the sums of p and y and, on request, the
  per-block Grams sum p_b p_b^T. Every ModHiFi pair score follows exactly
  (``scorers.fidelity.pair_scores_from``). The cross products come from the weight gradient of
  the layer (``conv2d_weight``: the cost of one forward of the layer, never a D x D matrix);
  grouped convolutions pair each output with the inputs of its group only.
* ``KeptStats``: what delta* needs once the kept inputs ``keep`` and kept outputs ``rows`` are
  known. ``exact``: the Gram of the kept input rows only, sum p_K y_R^T and the sums;
  ``position``: the inputs seen as C channels x S positions (a conv's kernel offsets, or the
  positions of a flattened channel), per position s the Gram of the kept channels and sum
  p_{K,s} z_s^T with z_s = W[R, removed, s] p_{removed, s}: S small Grams instead of one of
  (C_kept S)^2 entries (``editors.common.compensate.refit_from``).

All state is float64 sums (merge adds, all-reduce sums); each batch's products are computed in
the activations' dtype, in chunks of at most ``chunk_bytes``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..core.errors import InputError
from .base import Statistic, check_activations

CHUNK_BYTES = 64 << 20


def conv_geometry(module: nn.Conv2d) -> dict:
    """kernel_size, stride, padding, dilation, groups of a Conv2d with numeric zero padding."""
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        raise InputError(
            f"statistics need numeric zero padding, got padding={module.padding!r}, "
            f"padding_mode={module.padding_mode!r}"
        )
    return dict(
        kernel_size=tuple(module.kernel_size),
        stride=tuple(module.stride),
        padding=tuple(module.padding),
        dilation=tuple(module.dilation),
        groups=module.groups,
    )


def _unfold_kw(conv: dict) -> dict:
    return {k: conv[k] for k in ("kernel_size", "stride", "padding", "dilation")}


def _pre_bias(out: torch.Tensor, bias: torch.Tensor | None, conv: bool) -> torch.Tensor:
    if bias is None:
        return out
    return out - (bias.view(1, -1, 1, 1) if conv else bias)


def _patch_sums(x: torch.Tensor, conv: dict, out_hw) -> torch.Tensor:
    """sum over rows of the unfolded patches of ``x`` [N, C, H, W]: [C, kh * kw]."""
    xs = x.sum(0, keepdim=True)
    ones = xs.new_ones(1, 1, *out_hw)
    shape = (1, x.shape[1], *conv["kernel_size"])
    w = torch.nn.grad.conv2d_weight(
        xs, shape, ones, conv["stride"], conv["padding"], conv["dilation"]
    )
    return w.reshape(x.shape[1], -1)


class _Sums(Statistic):
    """A statistic whose state is all float64 sums: merge adds, all-reduce sums."""

    def merge(self, other):
        self._check_merge(other)
        for k, v in other.state_dict().items():
            setattr(self, k, getattr(self, k) + v.to(getattr(self, k).device))
        return self

    def all_reduce(self, comm) -> None:
        self._sum_state(comm)

    def n(self) -> float:
        if float(self.count) <= 0:
            raise InputError(f"the {type(self).__name__} statistic has seen no samples")
        return float(self.count)


class PairStats(_Sums):
    """Sums for ModHiFi's pair scores of a Linear [out, D] or Conv2d [out, in/groups, kh, kw]:
    ``r`` [out, blocks per output], ``psum`` (a conv: [in, kh*kw]; a Linear: [D]), ``ysum``
    [out], ``count`` rows and, with ``blocks``, ``bgram`` [blocks, S, S] (S = kh*kw or
    ``block``). ``weight`` is kept by reference: the layer must not change while collecting."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        conv: dict | None = None,
        block: int = 1,
        blocks: bool = False,
        chunk_bytes: int = CHUNK_BYTES,
    ):
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()
        self.conv, self.chunk_bytes, self.keep_blocks = conv, int(chunk_bytes), bool(blocks)
        co = weight.shape[0]
        if conv is not None:
            cin = weight.shape[1] * conv["groups"]
            self.size = weight[0, 0].numel()  # S = kh * kw
            nb, npsum = weight.shape[1], (cin, self.size)
            total = cin
        else:
            if weight.shape[1] % block:
                raise InputError(f"block {block} does not divide {weight.shape[1]} inputs")
            self.size = int(block)
            nb = total = weight.shape[1] // block
            npsum = (weight.shape[1],)
        f64 = dict(dtype=torch.float64, device=weight.device)
        self.count = torch.zeros((), dtype=torch.float64)
        self.r = torch.zeros(co, nb, **f64)
        self.psum = torch.zeros(npsum, **f64)
        self.ysum = torch.zeros(co, **f64)
        self.bgram = torch.zeros(total if blocks else 0, self.size, self.size, **f64)

    def state_dict(self):
        return {
            "count": self.count,
            "r": self.r,
            "psum": self.psum,
            "ysum": self.ysum,
            "bgram": self.bgram,
        }

    def update(self, xy, labels=None) -> None:
        x, out = xy
        check_activations(x, "layer inputs")
        self.to(x.device)
        self.count = self.count.cpu()
        if self.conv is not None:
            self._update_conv(x, out)
        else:
            self._update_linear(x, out)

    def _update_conv(self, x, out):
        c, w = self.conv, self.weight
        y = _pre_bias(out, self.bias, True)
        cross = torch.nn.grad.conv2d_weight(
            x, w.shape, y, c["stride"], c["padding"], c["dilation"], c["groups"]
        )  # [out, in/g, kh, kw] = sum_rows y_c p_(i, k)
        self.r += (cross * w).flatten(2).sum(-1).double()
        self.psum += _patch_sums(x, c, y.shape[2:]).double()
        self.ysum += y.sum((0, 2, 3)).double()
        self.count += y.shape[0] * y.shape[2] * y.shape[3]
        if self.keep_blocks:
            per = max(1, self.chunk_bytes // max(1, x[0].numel() * self.size * x.element_size()))
            for part in x.split(per):
                u = F.unfold(part, **_unfold_kw(c))  # [n, C * S, L]
                u = u.view(part.shape[0], x.shape[1], self.size, -1)
                self.bgram += torch.einsum("nial,nibl->iab", u, u).double()

    def _update_linear(self, x, out):
        w = self.weight
        rows = x.reshape(-1, x.shape[-1])
        y = _pre_bias(out, self.bias, False).reshape(-1, w.shape[0])
        nb, s = self.r.shape[1], self.size
        step = max(1, self.chunk_bytes // max(1, 4 * w.shape[1]))
        for c0 in range(0, w.shape[0], step):
            cross = y[:, c0 : c0 + step].T @ rows  # [chunk, D]
            part = (cross * w[c0 : c0 + step]).view(-1, nb, s).sum(-1)
            self.r[c0 : c0 + step] += part.double()
        self.psum += rows.sum(0).double()
        self.ysum += y.sum(0).double()
        self.count += rows.shape[0]
        if self.keep_blocks:
            v = rows.view(rows.shape[0], nb, s)
            self.bgram += torch.einsum("mbs,mbt->bst", v, v).double()


class KeptStats(_Sums):
    """delta* statistics of a Linear / Conv2d for the kept inputs ``keep`` (a conv's input
    channels; a Linear's input features, or in ``position`` mode its kept channels of ``block``
    features each) and kept outputs ``rows``. ``exact``: ``gram`` [Dk, Dk] = sum p_K p_K^T,
    ``cross`` [Dk, R] = sum p_K y_R^T, ``psum`` [Dk], ``ysum`` [R] (a grouped conv: one of each
    per group, stacked, every group keeping as many inputs and outputs). ``position``: ``gram``
    [S, Ck, Ck], ``cross`` [S, Ck, R] = sum p_{K,s} z_s^T, ``psum`` [S, Ck], ``ysum`` [S, R]
    (sums of z_s). ``weight`` is read at each update (the removed part z)."""

    def __init__(
        self,
        weight: torch.Tensor,
        keep: torch.Tensor,
        rows: torch.Tensor,
        bias: torch.Tensor | None = None,
        conv: dict | None = None,
        mode: str = "exact",
        block: int = 1,
        chunk_bytes: int = CHUNK_BYTES,
        backend: str | None = None,
    ):
        if mode not in ("exact", "position"):
            raise InputError(f"mode must be 'exact' or 'position', got {mode!r}")
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()
        self.conv, self.mode, self.chunk_bytes, self._backend = conv, mode, chunk_bytes, backend
        self.keep = torch.as_tensor(keep, dtype=torch.long).sort().values
        self.rows = torch.as_tensor(rows, dtype=torch.long).sort().values
        groups = conv["groups"] if conv is not None else 1
        self.groups = groups
        if conv is not None:
            self.size, n_in = weight[0, 0].numel(), weight.shape[1] * groups
        else:
            self.size = int(block) if mode == "position" else 1
            n_in = weight.shape[1] // self.size
        keep_mask = torch.zeros(n_in, dtype=torch.bool)
        keep_mask[self.keep] = True
        self.drop = (~keep_mask).nonzero().squeeze(1)
        ck, nr = len(self.keep), len(self.rows)
        f64 = dict(dtype=torch.float64, device=weight.device)
        self.count = torch.zeros((), dtype=torch.float64)
        if mode == "position":
            if groups != 1:
                raise InputError("position-mode delta* statistics need groups=1")
            s = self.size
            self.gram = torch.zeros(s, ck, ck, **f64)
            self.cross = torch.zeros(s, ck, nr, **f64)
            self.psum = torch.zeros(s, ck, **f64)
            self.ysum = torch.zeros(s, nr, **f64)
            return
        if ck % groups or nr % groups:
            raise InputError("a grouped conv must keep as many inputs and outputs in each group")
        dk = ck // groups * (self.size if conv is not None else 1)
        self.gram = torch.zeros(groups, dk, dk, **f64)
        self.cross = torch.zeros(groups, dk, nr // groups, **f64)
        self.psum = torch.zeros(groups, dk, **f64)
        self.ysum = torch.zeros(groups, nr // groups, **f64)

    def state_dict(self):
        return {
            "count": self.count,
            "gram": self.gram,
            "cross": self.cross,
            "psum": self.psum,
            "ysum": self.ysum,
        }

    def update(self, xy, labels=None) -> None:
        x, out = xy
        check_activations(x, "layer inputs")
        self.to(x.device)
        self.count = self.count.cpu()
        keep, rows = self.keep.to(x.device), self.rows.to(x.device)
        conv = self.conv is not None
        y = _pre_bias(out, self.bias, conv).index_select(1 if conv else -1, rows)
        if self.mode == "position":
            self._update_position(x, y)
        elif conv:
            self._update_conv(x.index_select(1, keep), y)
        else:
            xk = x.index_select(-1, keep).reshape(-1, len(keep))
            y = y.reshape(-1, len(rows))
            _, fn = ops.resolve("gram", xk, self._backend)
            g, s, n = fn(xk)
            self.gram[0] += g.double()
            self.psum[0] += s.double()
            self.cross[0] += (xk.T @ y).double()
            self.ysum[0] += y.sum(0).double()
            self.count += n

    def _update_conv(self, xk, y):
        c, g = self.conv, self.groups
        _, fn = ops.resolve("gram", xk, self._backend)
        for j, part in enumerate(xk.chunk(g, 1)):
            gram, s, n = fn(part, **_unfold_kw(c))
            self.gram[j] += gram.double()
            self.psum[j] += s.double()
        shape = (y.shape[1], xk.shape[1] // g, *c["kernel_size"])
        cross = torch.nn.grad.conv2d_weight(
            xk, shape, y, c["stride"], c["padding"], c["dilation"], g
        )
        self.cross += cross.reshape(g, y.shape[1] // g, -1).transpose(1, 2).double()
        for j, part in enumerate(y.chunk(g, 1)):
            self.ysum[j] += part.sum((0, 2, 3)).double()
        self.count += n

    def _update_position(self, x, y):
        """Rows [M, C, S] (unfolded conv patches, or a flattened Linear input), chunked."""
        s = self.size
        w = self.weight.index_select(0, self.rows.to(x.device))
        w = w.reshape(w.shape[0], -1, s)
        wd = w.index_select(1, self.drop.to(x.device)).permute(2, 1, 0)  # [S, Cd, R]
        keep, drop = self.keep.to(x.device), self.drop.to(x.device)
        if self.conv is not None:
            c = self.conv
            per = max(1, self.chunk_bytes // max(1, x[0].numel() * s * x.element_size()))
            parts = (
                F.unfold(part, **_unfold_kw(c))
                .view(part.shape[0], x.shape[1], s, -1)
                .permute(0, 3, 1, 2)
                .reshape(-1, x.shape[1], s)
                for part in x.split(per)
            )
        else:
            rows = x.reshape(-1, x.shape[-1]).view(-1, x.shape[-1] // s, s)
            per = max(1, self.chunk_bytes // max(1, rows[0].numel() * 4 * 2))
            parts = rows.split(per)
        for p in parts:
            pk = p.index_select(1, keep).permute(2, 0, 1)  # [S, m, Ck]
            z = torch.bmm(p.index_select(1, drop).permute(2, 0, 1), wd)  # [S, m, R]
            self.gram += torch.bmm(pk.transpose(1, 2), pk).double()
            self.cross += torch.bmm(pk.transpose(1, 2), z).double()
            self.psum += pk.sum(1).double()
            self.ysum += z.sum(1).double()
            self.count += p.shape[0]
