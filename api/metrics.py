"""``/metrics`` in the Prometheus text format, read from the components at scrape time."""

from __future__ import annotations

from collections.abc import Iterable

Sample = tuple[str, str, str, float]  # name, type, help, value


def render(samples: Iterable[Sample]) -> str:
    """Prometheus text format 0.0.4."""
    lines = []
    for name, kind, help_text, value in samples:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}")
    return "\n".join(lines) + "\n"


# upload latencies run from tens of milliseconds (loopback) to minutes (a store that was down)
# (fine below a second: the p99 < 1 s objective is read straight off the le="1" bucket)
LATENCY_BUCKETS_S = (
    *(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0),
    *(1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)


class Histogram:
    """A Prometheus histogram: cumulative bucket counts, a sum and a count."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help_text = name, help_text
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * len(self.buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.total += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break

    def render(self) -> str:
        """The histogram's lines in the text format."""
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            running += n
            lines.append(f'{self.name}_bucket{{le="{bound:g}"}} {running}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum {self.total:g}")
        lines.append(f"{self.name}_count {self.count}")
        return "\n".join(lines) + "\n"
