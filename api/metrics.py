"""``/metrics`` in the Prometheus text format, read from the components at scrape time."""

from __future__ import annotations

import math
from collections.abc import Iterable

Sample = tuple[str, str, str, float]  # name, type, help, value


def number(value: float) -> str:
    """A sample value as Prometheus reads it, every digit kept (``:g`` kept 6: a seconds
    sum past 10^6 stopped moving by the small amounts added to it)."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def render(samples: Iterable[Sample]) -> str:
    """Prometheus text format 0.0.4."""
    lines = []
    for name, kind, help_text, value in samples:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name} {number(value)}")
    return "\n".join(lines) + "\n"


# upload latencies run from tens of milliseconds (loopback) to minutes (a store that was down)
# (fine below a second: the p99 < 1 s objective is read straight off the le="1" bucket)
LATENCY_BUCKETS_S = (
    *(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0),
    *(1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)


FILE_KINDS = {".ts": "segment", ".m4s": "segment", ".m3u8": "playlist", ".mp4": "mp4"}


def file_kind(key: str) -> str:
    """The ``kind`` label of an uploaded file: segment, playlist, mp4 or other."""
    dot = key.rfind(".")
    return FILE_KINDS.get(key[dot:].lower(), "other") if dot >= 0 else "other"


class Histogram:
    """A Prometheus histogram with one label: cumulative bucket counts, a sum and a count
    per label value."""

    def __init__(
        self, name: str, help_text: str, buckets: tuple[float, ...], label: str = "kind"
    ) -> None:
        self.name, self.help_text, self.label = name, help_text, label
        self.buckets = tuple(sorted(buckets))
        self._series: dict[str, tuple[list[int], list[float]]] = {}  # counts, [sum, count]

    def observe(self, value: float, label_value: str = "") -> None:
        """Count one observation under ``label_value``."""
        counts, totals = self._series.setdefault(label_value, ([0] * len(self.buckets), [0, 0]))
        totals[0] += value
        totals[1] += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
                break

    def count(self, label_value: str = "") -> int:
        """Observations so far under ``label_value``."""
        series = self._series.get(label_value)
        return int(series[1][1]) if series else 0

    def render(self) -> str:
        """The histogram's lines in the text format."""
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} histogram"]
        for value, (counts, (total, count)) in sorted(self._series.items()):
            label = f'{self.label}="{value}"'
            running = 0
            for bound, n in zip(self.buckets, counts, strict=True):
                running += n
                lines.append(f'{self.name}_bucket{{{label},le="{bound:g}"}} {running}')
            lines.append(f'{self.name}_bucket{{{label},le="+Inf"}} {int(count)}')
            lines.append(f"{self.name}_sum{{{label}}} {number(total)}")
            lines.append(f"{self.name}_count{{{label}}} {int(count)}")
        return "\n".join(lines) + "\n"
