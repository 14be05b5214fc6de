"""Kernel dispatch: auto is the op's own dispatch (the csrc kernel registered for the device, else
Triton on CUDA, else the reference); the environment variable and the keyword force one; a forced
backend that cannot run is an error."""

import os
import subprocess
import sys

import pytest
import torch

from pluginedit import ops

OPS = ("class_moments", "gram")


@pytest.mark.parametrize("op", OPS)
def test_auto_on_cpu_is_csrc_when_loaded_else_torch(op, monkeypatch):
    monkeypatch.delenv(ops.ENV, raising=False)
    expect = "csrc" if "csrc" in ops.available(op) else "torch"
    assert ops.resolve(op, torch.zeros(2, 3))[0] == expect


@pytest.mark.parametrize("op", OPS)
def test_auto_never_picks_triton_on_cpu(op, monkeypatch):
    monkeypatch.delenv(ops.ENV, raising=False)
    assert ops.resolve(op, torch.zeros(2, 3))[0] != "triton"


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", ops.BACKENDS)
def test_env_and_keyword_force_a_backend(op, backend, monkeypatch):
    if backend not in ops.available(op):
        pytest.skip(f"{backend} not available here")
    monkeypatch.setenv(ops.ENV, backend)
    assert ops.resolve(op, torch.zeros(2, 3))[0] == backend
    monkeypatch.setenv(ops.ENV, "torch")
    assert ops.resolve(op, torch.zeros(2, 3), backend=backend)[0] == backend  # keyword wins


def test_forced_backends_agree_through_call():
    x = torch.randn(3, 5, 7, 7)
    lab = torch.tensor([0, 2, 0])
    ref = ops.call("class_moments", x, lab, 3, backend="torch")
    for b in ops.available("class_moments"):
        if b == "triton" and not os.environ.get("TRITON_INTERPRET"):
            continue  # compiled triton (a GPU is present) runs CUDA tensors only
        got = ops.call("class_moments", x, lab, 3, backend=b)
        torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("op", OPS)
def test_auto_on_cuda_is_triton_unless_cuda_csrc_is_built(op, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv(ops.ENV, raising=False)
    expect = "csrc" if "csrc" in ops.available(op, "cuda") else "triton"
    assert ops.resolve(op, torch.zeros(2, 3, device="cuda"))[0] == expect


def test_auto_runs_the_library_op(monkeypatch):
    # auto is one dispatch: the call goes through torch.ops.pluginedit.<op> (the profiler sees
    # the op), and a forced reference does not.
    monkeypatch.delenv(ops.ENV, raising=False)
    x, lab = torch.randn(3, 5, 7, 7), torch.tensor([0, 2, 0])
    calls = {
        "class_moments": lambda b: ops.call("class_moments", x, lab, 3, backend=b),
        "gram": lambda b: ops.call("gram", x, kernel_size=3, padding=1, backend=b),
    }
    for op, run in calls.items():
        for backend, seen in ((None, True), ("torch", False)):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
                run(backend)
            names = {e.name for e in p.events()}
            assert (f"pluginedit::{op}" in names) == seen, (op, backend, sorted(names)[:20])


def test_unknown_backend_is_an_error(monkeypatch):
    monkeypatch.setenv(ops.ENV, "cuda-magic")
    with pytest.raises(RuntimeError, match="cannot run"):
        ops.resolve("gram", torch.zeros(2, 2))


def test_import_without_extension_warns_once_and_falls_back():
    # A fresh interpreter where `pluginedit._C` is not there: one warning that says so (no talk of
    # a circular import), auto -> torch.
    code = (
        "import sys, warnings; sys.modules['pluginedit._C'] = None\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    import torch; from pluginedit import ops\n"
        "    a = ops.resolve('class_moments', torch.zeros(2, 3))[0]\n"
        "    ops.resolve('gram', torch.zeros(2, 3))\n"
        "n = sum('C++ extension (pluginedit._C) is not built' in str(x.message) for x in w)\n"
        "assert not any('circular' in str(x.message) for x in w), [str(x.message) for x in w]\n"
        "print(a, n, 'csrc' in ops.available('class_moments'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "PLUGINEDIT_BACKEND": "auto"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["torch", "1", "False"]
