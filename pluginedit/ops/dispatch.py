"""One torch.library op per statistic, and the names of the kernels behind it.

``define`` registers an op once: its schema (inferred from the annotated Python kernel), that
kernel for every device (Triton on CUDA tensors where triton is installed, the reference
elsewhere; through ``torch.library.triton_op`` so torch.compile sees the Triton kernels) and the
same function as its fake. The compiled extension adds CPU and CUDA kernels to the same op by
``TORCH_LIBRARY_IMPL`` (csrc/ops.cpp); the dispatcher prefers them over the Python kernel.

``auto`` is that dispatch: ``resolve`` names the kernel it will run and returns a call of the op.
``backend=`` / ``PLUGINEDIT_BACKEND=torch|triton|csrc`` calls one implementation directly (tests,
benchmarks); forcing one that cannot run on the tensor is an error, never a silent fallback.
Every backend has the same contract: the op's docstring.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

import torch

from . import _csrc

BACKENDS = ("torch", "triton", "csrc")
ENV = "PLUGINEDIT_BACKEND"
NAMESPACE = "pluginedit"

_ops: dict[str, dict[str, Callable]] = {}  # op -> backend -> implementation (reference contract)
_auto: dict[str, Callable] = {}  # op -> a call of the torch.library op (same signature)


def define(op: str, kernel: Callable):
    """Registers ``pluginedit::<op>`` with ``kernel`` (annotated: the schema is inferred from it)
    as its implementation on every device and its fake. Returns the op (an OpOverloadPacket)."""
    name = f"{NAMESPACE}::{op}"
    if _csrc.TRITON and hasattr(torch.library, "triton_op"):
        _only_triton_decomposes(op, torch.library.triton_op(name, kernel, mutates_args=()))
    else:
        torch.library.custom_op(name, kernel, mutates_args=()).register_fake(kernel)
    return getattr(getattr(torch.ops, NAMESPACE), op)


def _only_triton_decomposes(op: str, op_def) -> None:
    """A triton_op decomposes into its Python kernel under torch.compile (so inductor sees the
    Triton kernels), on every device. Keep that for CUDA tensors the Triton kernel runs on, and
    keep the op whole elsewhere, so compiled code runs the kernel eager code runs (the compiled
    csrc one where registered, not the reference)."""
    from torch._subclasses.functional_tensor import FunctionalTensorMode

    decompose = getattr(op_def, "_torch_dispatch_fns", {}).get(FunctionalTensorMode)
    if decompose is None:  # another torch: leave triton_op's rule as it is
        return

    def rule(mode, func, types, args, kwargs):
        x = args[0] if args else kwargs["x"]
        if x.device.type == "cuda" and not _csrc.compiled_kernel(op, "CUDA"):
            return decompose(mode, func, types, args, kwargs)
        return mode.__torch_dispatch__(func, types, args, kwargs)

    op_def.register_torch_dispatch(FunctionalTensorMode, rule)


def register(op: str, backend: str):
    """Decorator: ``fn`` implements ``op`` for ``backend`` (with the reference's signature);
    ``backend="auto"`` marks the call of the torch.library op."""
    if backend not in (*BACKENDS, "auto"):
        raise ValueError(f"unknown backend {backend!r}; known: {BACKENDS}")

    def deco(fn):
        if backend == "auto":
            _auto[op] = fn
        else:
            _ops.setdefault(op, {})[backend] = fn
        return fn

    return deco


def _key(device: torch.device | str) -> str:
    return "CUDA" if torch.device(device).type == "cuda" else "CPU"


def available(op: str, device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run ``op`` on tensors of ``device``: ``csrc`` only where the
    extension registered a kernel for that device, ``triton`` where triton is installed."""
    impls = _ops.get(op, {})
    return [
        b
        for b in BACKENDS
        if b in impls and (b != "csrc" or _csrc.compiled_kernel(op, _key(device)))
    ]


def auto_backend(op: str, tensor: torch.Tensor) -> str:
    """The kernel the op's dispatch runs on ``tensor``: the compiled one registered for its
    device, else Triton on CUDA, else the reference."""
    if op not in _ops:
        raise KeyError(f"unknown kernel op {op!r}; known: {sorted(_ops)}")
    if _csrc.compiled_kernel(op, _key(tensor.device)) and tensor.device.type in ("cpu", "cuda"):
        return "csrc"
    if tensor.is_cuda and "triton" in _ops[op]:
        return "triton"
    return "torch"


def resolve(op: str, tensor: torch.Tensor, backend: str | None = None) -> tuple[str, Callable]:
    """The (backend name, function) that will run ``op`` on ``tensor``."""
    impls = _ops.get(op)
    if impls is None:
        raise KeyError(f"unknown kernel op {op!r}; known: {sorted(_ops)}")
    choice = backend or os.environ.get(ENV, "auto")
    if choice == "auto":
        name = auto_backend(op, tensor)
        return name, _auto.get(op, impls[name])
    if choice not in available(op, tensor.device):
        raise RuntimeError(
            f"backend {choice!r} cannot run op {op!r} on {tensor.device.type} tensors here "
            f"(available: {available(op, tensor.device)}); unset {ENV} or pick another backend"
        )
    return choice, impls[choice]


def call(op: str, tensor: torch.Tensor, *args, backend: str | None = None, **kwargs):
    """``op`` on ``tensor``; keyword options of one backend's launcher (``precision=``,
    ``deterministic=``, block sizes) go to the backend ``auto`` picks, called directly."""
    name, fn = resolve(op, tensor, backend)
    if fn is _auto.get(op) and set(kwargs) - set(inspect.signature(fn).parameters):
        fn = _ops[op][name]
    return fn(tensor, *args, **kwargs)
