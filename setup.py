"""Optional compiled extension from csrc/; everything else is in pyproject.toml.

The C++ (OpenMP) ops build wherever a compiler and torch are present; CUDA sources only with a
CUDA build of torch and a CUDA toolkit. ``PLUGINEDIT_NO_EXT=1`` skips the build. A failed build
warns and installs the pure-Python package: the extension is never required."""

import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


def extensions():
    if os.environ.get("PLUGINEDIT_NO_EXT", "0") not in ("", "0"):
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("pluginedit: torch not importable at build time; skipping csrc", file=sys.stderr)
        return [], {}
    cpp = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))
    cuda = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cu"))
    if not cpp:
        return [], {}
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    args = {"cxx": ["-O3", "-std=c++17", *openmp]}
    if cuda and torch.version.cuda and CUDA_HOME:
        ext = CUDAExtension(
            "pluginedit._C",
            cpp + cuda,
            extra_compile_args={**args, "nvcc": ["-O3"]},
            extra_link_args=openmp,
            define_macros=[("WITH_CUDA", None)],
        )
    else:
        ext = CppExtension("pluginedit._C", cpp, extra_compile_args=args, extra_link_args=openmp)

    class OptionalBuild(BuildExtension):
        def run(self):
            try:
                super().run()
            except Exception as e:  # never block the install on the optional extension
                print(
                    f"pluginedit: csrc extension not built ({e}); using the PyTorch reference",
                    file=sys.stderr,
                )

    return [ext], {"build_ext": OptionalBuild.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
