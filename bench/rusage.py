"""CPU seconds of this process and of its reaped children, for the benchmarks' side-by-side
figures (user + system, as ``time`` would count them)."""

from __future__ import annotations

import resource


def cpu_self() -> float:
    """CPU seconds this process has used."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_children() -> float:
    """CPU seconds of the child processes waited for so far (an ffmpeg run, once it ended)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
