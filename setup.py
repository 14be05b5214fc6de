"""Optional compiled extension from csrc/; everything else is in pyproject.toml.

``PLUGINEDIT_BUILD_EXT`` says what the install must build:

* ``0``: nothing (the pure-Python package; ``PLUGINEDIT_NO_EXT=1`` is an alias);
* ``1``: the C++ (OpenMP) ops; a failed build fails the install;
* ``cuda``: the C++ and CUDA ops; a failed build, a CPU-only torch or no CUDA toolkit fails it;
* unset: best effort (CUDA sources where torch and a toolkit have CUDA); a failed build installs
  the pure-Python package with a loud warning.

The C++ standard is the one ``torch.utils.cpp_extension`` picks for the installed torch (C++17
before torch 2.10, C++20 after): hard-coding one breaks the build against newer headers."""

import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
MODES = ("0", "1", "cuda")


def mode() -> str | None:
    """The build mode from the environment: one of MODES, or None (best effort)."""
    value = os.environ.get("PLUGINEDIT_BUILD_EXT", "").strip().lower()
    if not value and os.environ.get("PLUGINEDIT_NO_EXT", "0") not in ("", "0"):
        return "0"
    if not value:
        return None
    if value not in MODES:
        sys.exit(f"pluginedit: PLUGINEDIT_BUILD_EXT must be one of {MODES}, got {value!r}")
    return value


def _loud(msg: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\npluginedit: {msg}\n{bar}\n", file=sys.stderr)


def extensions(want: str | None):
    if want == "0":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        if want:
            sys.exit("pluginedit: PLUGINEDIT_BUILD_EXT is set but torch is not importable")
        _loud("torch not importable at build time; the C++ extension is NOT built")
        return [], {}
    # Sources are named uniquely per backend (x.cpp / x_cuda.cu): two sources with one stem
    # would compile to the same object file.
    cpp = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))
    cuda = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cu"))
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    args = {"cxx": ["-O3", *openmp]}
    has_cuda = bool(torch.version.cuda and CUDA_HOME)
    if want == "cuda" and not has_cuda:
        sys.exit(
            "pluginedit: PLUGINEDIT_BUILD_EXT=cuda needs a CUDA build of torch and a CUDA "
            f"toolkit (torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME})"
        )
    with_cuda = bool(cuda) and has_cuda and want != "1"
    if with_cuda:
        ext = CUDAExtension(
            "pluginedit._C",
            cpp + cuda,
            extra_compile_args={**args, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=openmp,
            define_macros=[("WITH_CUDA", None)],
        )
    else:
        ext = CppExtension("pluginedit._C", cpp, extra_compile_args=args, extra_link_args=openmp)
    kind = "C++ and CUDA" if with_cuda else "C++"

    class Build(BuildExtension):
        def finalize_options(self):
            # pip builds in a fresh temporary folder each time; a fixed one (git-ignored build/)
            # keeps ninja's objects, so a reinstall recompiles only the sources that changed
            super().finalize_options()
            self.build_temp = str(ROOT / "build" / f"temp-{sys.implementation.cache_tag}")

        def run(self):
            try:
                super().run()
            except Exception as e:
                if want:  # asked for: a failed build is a failed install
                    raise
                _loud(
                    f"the {kind} extension (pluginedit._C) FAILED to build ({e}); installing "
                    "the pure-Python package (PyTorch reference ops). Set "
                    "PLUGINEDIT_BUILD_EXT=1 (or cuda) to make this an error."
                )
            else:
                print(f"pluginedit: built the {kind} extension (pluginedit._C)", file=sys.stderr)

    return [ext], {"build_ext": Build.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions(mode())
setup(ext_modules=ext_modules, cmdclass=cmdclass)
