"""What the steps of ModHiFi-P add up (removals, ridges, warnings, delta* modes, seconds) and
what the record and the warnings say of them."""

from __future__ import annotations

import warnings

from ...linalg import IllConditionedWarning
from ..prune import warn_kept_whole

PARTS = ("scores", "statistics", "solves", "surgery", "recalibration")


def new_totals() -> dict:
    """What the steps add up: removals, steps, ridges, warnings, delta* modes, seconds."""
    return {
        "removed": {},
        "steps": [],
        "ridges": [],
        "warned": 0,
        "uncompensated": {},
        "modes": {},
        "kept_whole": {},
        "unscored": {},
        "sequential_passes": 0,
        "sequential_resumed": 0,
        "sequential_gmacs": [],
        "seconds": dict.fromkeys(PARTS, 0.0),
    }


def warn_totals(totals: dict) -> None:
    if totals["warned"]:
        warnings.warn(
            f"modhifi-p: {totals['warned']} compensation solve(s) met an ill-conditioned "
            "Gram; the ridge was grown there",
            IllConditionedWarning,
            stacklevel=3,
        )
    if totals["uncompensated"]:
        named = "; ".join(f"{p!r}: {why}" for p, why in list(totals["uncompensated"].items())[:3])
        warnings.warn(
            f"modhifi-p: {len(totals['uncompensated'])} consumer(s) pruned without delta* "
            f"({named})",
            stacklevel=3,
        )
    if totals["unscored"]:
        named = ", ".join(repr(p) for p in list(totals["unscored"])[:3])
        warnings.warn(
            f"modhifi-p: {len(totals['unscored'])} layer(s) not scored, their channels kept "
            f"unless a scored layer shares their group ({named}; record.info['unscored'])",
            stacklevel=3,
        )
    warn_kept_whole("modhifi-p", totals["kept_whole"])


def report_totals(totals: dict) -> dict:
    """The record's info on delta* and time: modes used (exact: the Gram of the kept inputs;
    position: per-position Grams under the memory budget), consumers left uncompensated and
    why, seconds per part (scores: their statistics pass and formulas; statistics: the delta*
    pass; solves; surgery: the removal plan and torch-pruning; recalibration)."""
    return {
        "compensation_modes": totals["modes"],
        "uncompensated": totals["uncompensated"],
        "kept_whole": totals["kept_whole"],
        "unscored": totals["unscored"],
        "sequential_passes": totals["sequential_passes"],
        "sequential_resumed": totals["sequential_resumed"],
        "sequential_gmacs": totals["sequential_gmacs"],
        "seconds": {k: round(v, 3) for k, v in totals["seconds"].items()},
    }
