"""Warnings about a stream of frames, let through once per interval with a count.

A publisher sending bad or late frames sends many: one warning line per frame (50 a second
for audio) buried the log and cost the writer's time. ``LogThrottle`` lets the first through
and then one per ``interval_s`` per key, saying how many it stands for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

THROTTLE_INTERVAL_S = 10.0
MAX_KEYS = 4096  # (keys are members, tracks: past this the oldest are forgotten)


class LogThrottle:
    """Says whether a warning under a key may go out now, and how many were held back."""

    def __init__(
        self,
        interval_s: float = THROTTLE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._keys: dict[Hashable, tuple[float, int]] = {}  # key: (last let through, held)

    def allow(self, key: Hashable = None) -> int | None:
        """None: hold this one back; else let it through, with how many were held since."""
        now = self._clock()
        last = self._keys.get(key)
        if last is not None and now - last[0] < self._interval_s:
            self._keys[key] = (last[0], last[1] + 1)
            return None
        if last is None and len(self._keys) >= MAX_KEYS:
            self._keys.pop(next(iter(self._keys)))
        self._keys[key] = (now, 0)
        return 0 if last is None else last[1]
