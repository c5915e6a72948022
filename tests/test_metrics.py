"""The Prometheus text format: sample values keep every digit."""

from __future__ import annotations

from api.metrics import Histogram, render


def test_values_keep_their_digits() -> None:
    """A seconds sum past 10^6 still moves by a millisecond (``:g`` kept six digits)."""
    hist = Histogram("x_seconds", "x", (1.0,))
    hist.observe(1_000_000.0)
    hist.observe(0.001)
    text = hist.render()
    assert 'x_seconds_sum{kind=""} 1000000.001' in text
    lines = render([("up", "gauge", "u", 1234567.25), ("n", "counter", "c", 7)]).splitlines()
    assert lines[2] == "up 1234567.25" and lines[-1] == "n 7"
    assert render([("inf", "gauge", "i", float("inf"))]).splitlines()[-1] == "inf +Inf"
