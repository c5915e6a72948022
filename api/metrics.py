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
