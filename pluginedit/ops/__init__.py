"""Kernel dispatch: one name per statistics op, several backends.

``auto`` picks Triton for CUDA tensors, else the compiled csrc op if it is loaded, else the
plain-PyTorch reference. ``PLUGINEDIT_BACKEND=torch|triton|csrc`` (or ``backend=`` on a call)
forces one; forcing a backend that cannot run is an error, never a silent fallback.
"""
from __future__ import annotations

import os
from typing import Callable

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
            f"unset {ENV} or pick another backend")
    return choice, impls[choice]


def call(op: str, tensor: torch.Tensor, *args, backend: str | None = None, **kwargs):
    return resolve(op, tensor, backend)[1](tensor, *args, **kwargs)


# One module per op: each registers its backends (torch always; csrc, triton where present).
from . import channel_moments, class_maps, class_moments, gram  # noqa: E402,F401
from . import reference  # noqa: E402,F401  (every reference in one namespace)
