"""Latency is reported with its spread and a speed-up only when the timings support it: the
decisions are tested on synthetic timings (an injected clock and load), not on the wall clock."""

import pytest
import torch

from pluginedit import report


def _clock(durations_s):
    """A timer whose consecutive (start, end) readings are ``durations_s`` apart."""
    ticks = [0.0]
    for d in durations_s:
        ticks += [ticks[-1], ticks[-1] + d]
    it = iter(ticks)
    return lambda: next(it)


def _timing(durations_ms, load=0.1, cores=8):
    return report.latency(
        torch.nn.Identity(),
        torch.zeros(2, 3),
        warmup=0,
        repeats=len(durations_ms),
        timer=_clock([d / 1e3 for d in durations_ms]),
        load=lambda: {"load_1min": load, "cores": cores},
    )


def test_latency_reports_median_quartiles_and_extremes_of_the_timed_runs():
    t = _timing([5.0, 1.0, 3.0, 2.0, 4.0])
    assert t["repeats"] == 5
    assert (t["median"], t["q1"], t["q3"], t["min"], t["max"]) == pytest.approx(
        (3.0, 2.0, 4.0, 1.0, 5.0)
    )


def test_latency_stops_at_the_time_budget_but_never_below_min_repeats():
    slow = report.latency(
        torch.nn.Identity(),
        torch.zeros(1),
        warmup=0,
        repeats=30,
        min_repeats=4,
        budget_s=1.0,
        timer=_clock([0.5] * 40),
        load=lambda: {"load_1min": None, "cores": 1},
    )
    assert slow["repeats"] == 4  # 2 s spent after 4 runs of 0.5 s: the budget is spent


def test_a_clear_difference_on_an_idle_machine_is_a_speed_up():
    dense, pruned = _timing([10, 10.2, 9.9, 10.1, 10.0]), _timing([5, 5.1, 4.9, 5.0, 5.2])
    sp = report.speedup(dense, pruned)
    assert sp["significant"] and sp["ratio"] == pytest.approx(2.0)
    rows = report.table(_rep(dense, pruned))
    assert "2.00x faster" in rows and "no speed-up claimed" not in rows
    assert "1.00x slower" not in report.table(_rep(pruned, dense))
    assert "2.00x slower" in report.table(_rep(pruned, dense))


def test_overlapping_spreads_are_not_a_speed_up():
    dense, pruned = _timing([10, 8, 12, 9, 11]), _timing([9, 7, 11, 8, 10])
    sp = report.speedup(dense, pruned)
    assert not sp["significant"] and "within the spread" in sp["reason"]
    text = report.table(_rep(dense, pruned))
    assert "not significant" in text and "x faster" not in text


def test_a_busy_machine_or_a_wide_spread_makes_the_timing_unreliable():
    busy = _timing([10, 10.2, 9.9, 10.1, 10.0], load=9.0, cores=2)
    sp = report.speedup(busy, _timing([5, 5.1, 4.9, 5.0, 5.2]))
    assert not sp["significant"] and "machine busy (load 9.0 on 2 cores)" in sp["reason"]
    noisy = _timing([1, 40, 10, 2, 30])  # the "322.94x faster" of a busy run
    sp = report.speedup(noisy, _timing([0.1, 0.1, 0.1, 0.1, 0.1]))
    assert not sp["significant"] and "too spread" in sp["reason"]


def _rep(before, after):
    side = lambda t: {
        "accuracy": 0.9,
        "params": 10,
        "macs": 10,
        "latency_ms": t["median"],  # noqa: E731
        "latency": t,
    }
    return {"before": side(before), "after": side(after)}
