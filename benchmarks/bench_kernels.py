"""``pluginedit bench kernels`` (``pluginedit.cli.bench``) run as a script, with this folder's result
rules (``_results.py``): kernel timings of the statistics ops over their backends
(``pluginedit.ops.bench``) and the end-to-end ResNet-50 statistics / inference ratio.

Results go to ``<out>/<device>.json`` with the device name, torch/triton versions and the stamp of
``_results.py``; ``--out`` defaults to a scratch folder (``$PLUGINEDIT_BENCH_OUT/bench_kernels/``
or ``bench-out/bench_kernels/``), ``--out benchmarks/results`` updates the committed results.
"""

from __future__ import annotations

import sys

import _results  # the helper beside this script

from pluginedit.cli import bench


def main(argv=None) -> int:
    return bench.main(argv, results=_results)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
