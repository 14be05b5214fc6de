"""GPU readiness without a GPU: the kernels compile for the GPUs users run, ahead of time.

* Triton: the variants a launcher can pick (``aot_configs()`` of each kernel family) compile with
  triton's own ptxas; the default variants must not spill registers or fall back to local memory
  (a stack frame in the cubin). Every run: every default variant of every kernel for sm_90
  (slow-marked, 80 s on 2 busy cores without triton's cache); without the slow tests, the four
  hot defaults only.
  Opt-in, ``PLUGINEDIT_FULL_AOT=1``: the exhaustive sweep of every variant (85) for sm_90 and
  sm_80 (about 6 minutes on 2 busy cores; run it when a kernel or its tiles change).
* CUDA C++: every csrc/*.cu compiles once (``nvcc -c``, sm_90) against the installed torch's
  headers where nvcc exists (the CPU wheel of torch ships the c10/cuda and ATen/cuda headers
  too); skipped with the reason otherwise."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import sysconfig
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from tests.ops import _aot

ROOT = Path(__file__).resolve().parents[2]
WHY = _aot.available()
needs_aot = pytest.mark.skipif(WHY is not None, reason=str(WHY))


def _configs():
    from pluginedit.triton_kernels import class_moments, gram

    return [*class_moments.aot_configs(), *gram.aot_configs()]


# The hot defaults: what ResNet-50 statistics launch (fp32 and bf16 conv Gram at D > 32, class
# moments on NCHW maps and channels_last, deterministic with a shift).
QUICK = (
    "gram conv fp32 tf32x3 D64 w8",
    "gram conv bf16 tf32 D64 w8",
    "class_moments fp32 16x256 shift=True atomic=False",
    "class_moments bf16 128x32 shift=True atomic=False",
)


def _usage(args):
    name, capability = args
    cfg = next(c for c in _configs() if c.name == name)
    try:
        return name, capability, _aot.compile_usage(cfg, capability), None
    except Exception as e:  # reported per variant, with the others still compiled
        return name, capability, None, f"{type(e).__name__}: {traceback.format_exc()[-900:]}"


def _check(names, capabilities):
    """Compiles ``names`` for each capability in parallel; returns the failures as lines."""
    jobs = [(n, c) for c in capabilities for n in names]
    defaults = {c.name for c in _configs() if c.default}
    bad = []
    # Fresh (spawned) workers without TRITON_INTERPRET in their environment from the start:
    # triton reads it at import, and under the interpreter @triton.jit makes interpreted
    # functions, which do not compile. Workers start lazily, so it stays unset until they end.
    interp = os.environ.pop("TRITON_INTERPRET", None)
    fusion = "TRITON_DEFAULT_FP_FUSION" not in os.environ
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton's default, minus its warning
    try:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(len(jobs), os.cpu_count() or 1), mp_context=ctx) as pool:
            for name, cap, use, err in pool.map(_usage, jobs):
                if err is not None:
                    bad.append(f"sm_{cap} {name}: does not compile: {err}")
                elif name in defaults and (use.stack or use.local):
                    bad.append(
                        f"sm_{cap} {name}: {use.regs} registers, {use.stack} B stack, "
                        f"{use.local} B local per thread (spill / local-memory fallback)"
                    )
    finally:
        if interp is not None:
            os.environ["TRITON_INTERPRET"] = interp
        if fusion:
            os.environ.pop("TRITON_DEFAULT_FP_FUSION", None)
    return bad


DEFAULTS_TEST = "test_every_default_variant_compiles_for_sm90_without_spills"


@needs_aot
def test_quick_defaults_compile_for_sm90_without_spills(request):
    if any(item.name == DEFAULTS_TEST for item in request.session.items):
        pytest.skip(f"{DEFAULTS_TEST} runs too and compiles these (a process pool costs ~20 s)")
    names = {c.name for c in _configs()}
    assert set(QUICK) <= names, set(QUICK) - names
    bad = _check(QUICK, [90])
    assert not bad, "\n".join(bad)


@needs_aot
@pytest.mark.slow
def test_every_default_variant_compiles_for_sm90_without_spills():
    defaults = [c.name for c in _configs() if c.default]
    assert set(QUICK) <= set(defaults)
    bad = _check(defaults, [90])
    assert not bad, "\n".join(bad)


FULL = "PLUGINEDIT_FULL_AOT"


@needs_aot
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get(FULL, "0") in ("", "0"), reason=f"exhaustive AOT sweep: set {FULL}=1"
)
def test_every_launcher_variant_compiles_for_sm90_and_sm80():
    configs = _configs()
    assert len({c.name for c in configs}) == len(configs), "variant names must be unique"
    bad = _check([c.name for c in configs], [90, 80])
    assert not bad, "\n".join(bad)


def _nvcc() -> str | None:
    found = shutil.which("nvcc") or "/usr/local/bin/nvcc"
    return found if os.access(found, os.X_OK) else None


def nvcc_command(nvcc: str, source: Path, out: Path, scratch: Path) -> list[str]:
    """``nvcc -c`` of one source with the flags torch.utils.cpp_extension gives nvcc: C++20 for
    torch >= 2.10 (C++17 before), torch's ABI macro; sm_90 as the H100 build would."""
    import torch
    from torch.utils.cpp_extension import include_paths

    includes = include_paths()
    # The CPU wheel lacks the one header CMake generates for CUDA builds; its content in every
    # CUDA wheel is this single macro (c10/cuda/impl/cuda_cmake_macros.h.in).
    shim = []
    if not (Path(includes[0]) / "c10/cuda/impl/cuda_cmake_macros.h").exists():
        (scratch / "c10/cuda/impl").mkdir(parents=True, exist_ok=True)
        (scratch / "c10/cuda/impl/cuda_cmake_macros.h").write_text(
            "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n"
        )
        shim = [f"-I{scratch}"]
    std = "c++20" if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 10) else "c++17"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        nvcc, "-c", str(source), "-o", str(out),
        f"-std={std}", "-O0", "--gpu-architecture=sm_90",
        "-DWITH_CUDA", "-DTORCH_EXTENSION_NAME=_C", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
        "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
        "--expt-relaxed-constexpr", "--compiler-options", "-fPIC",
        *shim, *(f"-I{p}" for p in includes), f"-I{sysconfig.get_paths()['include']}",
    ]  # fmt: skip


@pytest.mark.slow  # about 2 minutes per source on 2 busy cores (torch's headers are large)
@pytest.mark.parametrize("source", sorted(p.name for p in (ROOT / "csrc").glob("*.cu")))
def test_cuda_sources_compile_against_torch_headers(source, tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (PATH or /usr/local/bin/nvcc): .cu sources not checked")
    from torch.utils.cpp_extension import include_paths

    if not (Path(include_paths()[0]) / "c10" / "cuda" / "CUDAGuard.h").exists():
        pytest.skip("this torch ships no c10/cuda headers: .cu sources not checked")
    cmd = nvcc_command(nvcc, ROOT / "csrc" / source, tmp_path / "out.o", tmp_path)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stderr[-4000:]}"
    assert (tmp_path / "out.o").stat().st_size > 0


if __name__ == "__main__":  # python -m tests.ops.test_gpu_readiness: the table of every variant
    for cfg in _configs():
        n, cap, use, err = _usage((cfg.name, int(sys.argv[1]) if len(sys.argv) > 1 else 90))
        print(f"{'*' if cfg.default else ' '} sm_{cap} {n:60} {err or use}", flush=True)
