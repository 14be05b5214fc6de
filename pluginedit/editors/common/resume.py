"""Forwards that start part-way through a model, for the sequential refit's many passes.

A *link* is a child of an ``nn.Sequential`` / ``nn.ModuleList`` that one forward calls once, with
the previous child's output as its input (the chain a ResNet stage or a VGG ``features`` block
is). Resuming at a link L: its input comes from a cache (the calibration batches' inputs of L,
recorded once), and every link before L in L's container, and in the containers of L's
ancestors, returns a zero tensor of its usual shape instead of computing: only the code between
the links runs, and L onwards. That is exact only where nothing after L reads a value from
before it (no skip connection around L): each link is checked once, on the first batch, by
comparing the resumed forward with the whole one, and a link that differs is never used.

``Resumer.move_to(layer)`` moves the cache forward to the link closest above ``layer`` (running
only from the cached link on, with the weights as they are now); ``Resumer.run(key, b)`` runs
batch b from there (whole while nothing is cached)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ...core.components import get_module


class Stop(Exception):
    """Ends a forward once the input sought has been taken."""


def _links(model: nn.Module, x) -> tuple[list[str], dict[str, tuple], dict[str, tuple]]:
    """(link paths in call order, {path: output shape}, {path: input shape}) of the children of
    every container that the forward of ``x`` calls (shapes batch dimension first)."""
    paths = {m: p for p, m in model.named_modules()}
    kids = {
        paths[ch]: (paths[c], i)
        for c in model.modules()
        if isinstance(c, (nn.Sequential, nn.ModuleList))
        for i, ch in enumerate(c)
    }
    calls: list[str] = []  # in the order the calls start
    chained: dict[str, bool] = {}  # the input is the previous sibling's output (same object)
    last: dict[str, torch.Tensor] = {}
    shapes: dict[str, tuple] = {}
    shapes_in: dict[str, tuple] = {}

    def pre(path):
        parent, k = kids[path]
        prev = f"{parent}.{k - 1}" if parent else str(k - 1)

        def fn(_m, args):
            x = args[0] if args else None
            calls.append(path)
            chained[path] = torch.is_tensor(x) and (k == 0 or last.pop(prev, None) is x)
            if torch.is_tensor(x):
                shapes_in[path] = tuple(x.shape)

        return fn

    def post(path):
        def fn(_m, _args, out):
            if torch.is_tensor(out):
                last[path], shapes[path] = out, tuple(out.shape)

        return fn

    hs = [get_module(model, p).register_forward_pre_hook(pre(p)) for p in kids]
    hs += [get_module(model, p).register_forward_hook(post(p)) for p in kids]
    try:
        with torch.no_grad():
            model(x[:2] if torch.is_tensor(x) else x)
    finally:
        for h in hs:
            h.remove()
        last.clear()
    links = [p for p in calls if calls.count(p) == 1 and chained[p] and p in shapes]
    return links, shapes, shapes_in


class Resumer:
    """The cached inputs of one link at a time, for two models of the same structure (the
    pruned one and its dense copy), over the same calibration batches ``xs``."""

    def __init__(self, models: dict, xs: list, budget: int):
        self.models, self.xs, self.budget = models, xs, budget
        found = {k: _links(m, xs[0]) for k, m in models.items()}
        order = [p for p in found["dense"][0] if all(p in f[0] for f in found.values())]
        self.order = {p: i for i, p in enumerate(order)}
        self.shapes = {k: f[1] for k, f in found.items()}
        self.shapes_in = found["dense"][2]
        self.at: str | None = None
        self.cache: dict[str, list] = {}
        self.valid: dict[str, bool] = {}

    def move_to(self, layer: str) -> None:
        """Cache the inputs of the deepest usable link holding ``layer`` (or ``layer`` itself)
        that starts at or after the cached one; where there is none the cache stays (a later
        layer is reached from it too)."""
        link = self._link_for(layer)
        if link is not None and link != self.at:
            n = len(self.xs)
            new = {k: [self._take(k, b, link, self.at) for b in range(n)] for k in self.models}
            self.cache, self.at = new, link

    def run(self, key: str, b: int):
        """Forward batch b of model ``key`` from the cached link (whole where none is)."""
        return self._forward(key, b, self.at)

    def _forward(self, key: str, b: int, start: str | None):
        """Forward batch b of model ``key`` resumed at ``start`` (whose inputs are cached), or
        whole where ``start`` is None."""
        model = self.models[key]
        if start is None:
            return model(self.xs[b])
        with self._resumed(key, start, self.cache[key][b]):
            return model(self.xs[b])

    def _link_for(self, layer: str) -> str | None:
        parts = layer.split(".")
        for n in range(len(parts), 0, -1):
            p = ".".join(parts[:n])
            if p not in self.order or not self._usable(p):
                continue
            if self.at is None or self.order[p] >= self.order[self.at]:
                return p
        return None

    def _take(self, key: str, b: int, link: str, start: str | None) -> torch.Tensor:
        """The input of ``link`` in batch b of model ``key``, from a forward resumed at
        ``start`` (the cached link, or None: whole) and stopped there."""
        got = {}

        def grab(_m, args):
            got["x"] = args[0]
            raise Stop

        h = get_module(self.models[key], link).register_forward_pre_hook(grab)
        try:
            self._forward(key, b, start)
        except Stop:
            pass
        finally:
            h.remove()
        return got["x"]

    def _usable(self, link: str) -> bool:
        """Whether resuming at ``link`` gives the whole forward's output in both models
        (checked once, on the first batch; a forward that fails resumed, as where a skipped
        link's output is not batch-first, rules the link out) and its cache fits the budget."""
        if link not in self.valid:
            ok = self._bytes(link) * 2 <= self.budget
            for key in self.models if ok else ():
                model, x = self.models[key], self.xs[0]
                try:
                    with torch.no_grad():
                        whole = model(x)
                        with self._resumed(key, link, self._take(key, 0, link, None)):
                            part = model(x)
                    ok = ok and _same(whole, part)
                except Exception:  # noqa: BLE001 - any failure only means: do not resume here
                    ok = False
            self.valid[link] = ok
        return self.valid[link]

    def _bytes(self, link: str) -> int:
        """Bytes of the dense model's cached inputs of ``link`` over every batch."""
        shape = self.shapes_in.get(link, (0,))
        return int(torch.Size(shape[1:]).numel()) * 4 * sum(len(x) for x in self.xs)

    @contextlib.contextmanager
    def _resumed(self, key: str, link: str, xin: torch.Tensor):
        """Inside: ``link`` reads ``xin`` and the links before it return zeros."""
        model, shapes = self.models[key], self.shapes[key]
        skipped = _before(link, shapes, self.order)
        n = len(xin)
        for p in skipped:
            shape = (n, *shapes[p][1:])
            get_module(model, p).forward = lambda *a, _s=shape, **k: xin.new_zeros(_s)
        # first of the hooks there, so the others (the refit's) see the cached input
        # (the other positional arguments as given: a block may take more, e.g. height, width)
        h = get_module(model, link).register_forward_pre_hook(
            lambda _m, a: (xin, *a[1:]), prepend=True
        )
        try:
            yield
        finally:
            h.remove()
            for p in skipped:
                del get_module(model, p).forward


def _before(link: str, shapes: dict, order: dict) -> list[str]:
    """The links skipped to resume at ``link``: the earlier siblings of ``link`` and of each of
    its ancestors that is a link."""
    out, parts = [], link.split(".")
    for n in range(len(parts), 0, -1):
        p = ".".join(parts[:n])
        if p not in order:
            continue
        parent, k = ".".join(parts[: n - 1]), int(parts[n - 1]) if parts[n - 1].isdigit() else -1
        for j in range(k):
            sib = f"{parent}.{j}" if parent else str(j)
            if sib in shapes:
                out.append(sib)
    return out


def _same(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    if hasattr(a, "logits"):
        return _same(a.logits, getattr(b, "logits", None))
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(map(_same, a, b))
    return False
