"""The dispatch table behind ``pluginedit.ops``: each op module registers its backends here, and
``resolve`` picks one per call (see the package docstring for the rule)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

BACKENDS = ("torch", "triton", "csrc")
ENV = "PLUGINEDIT_BACKEND"

_ops: dict[str, dict[str, Callable]] = {}


def register(op: str, backend: str):
    """Decorator: ``fn`` implements ``op`` for ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {BACKENDS}")

    def deco(fn):
        _ops.setdefault(op, {})[backend] = fn
        return fn

    return deco


def available(op: str) -> list[str]:
    return [b for b in BACKENDS if b in _ops.get(op, {})]


def resolve(op: str, tensor: torch.Tensor, backend: str | None = None) -> tuple[str, Callable]:
    """The (backend name, function) that will run ``op`` on ``tensor``."""
    impls = _ops.get(op)
    if impls is None:
        raise KeyError(f"unknown kernel op {op!r}; known: {sorted(_ops)}")
    choice = backend or os.environ.get(ENV, "auto")
    if choice == "auto":
        if tensor.is_cuda and "triton" in impls:
            choice = "triton"
        elif "csrc" in impls and tensor.device.type == "cpu":
            choice = "csrc"
        else:
            choice = "torch"
    if choice not in impls:
        raise RuntimeError(
            f"backend {choice!r} cannot run op {op!r} here (available: {sorted(impls)}); "
            f"unset {ENV} or pick another backend"
        )
    return choice, impls[choice]


def call(op: str, tensor: torch.Tensor, *args, backend: str | None = None, **kwargs):
    return resolve(op, tensor, backend)[1](tensor, *args, **kwargs)
