"""The publisher's parts that do no I/O: the ingest URL, reconnect backoff, the resend buffer of
unacknowledged frames and the real-time pacer (``ingest.publisher`` drives them)."""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

US_PER_S = 1_000_000
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0
RESEND_MAX_MEDIA_S = 30.0  # unacked media held before reading the source pauses
RESEND_MAX_BYTES = 64 * 1024 * 1024


def ws_url(server: str) -> str:
    """The ingest WebSocket URL of a server's http(s) base URL."""
    base = server.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    elif not base.startswith(("ws://", "wss://")):
        base = "ws://" + base
    return base + "/v1/ingest"


def backoff_delays(
    initial_s: float = BACKOFF_INITIAL_S,
    maximum_s: float = BACKOFF_MAX_S,
    *,
    jitter: float = 0.1,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Exponential delays between reconnect attempts: ``initial_s`` doubling up to ``maximum_s``."""
    rand = rng or random.Random()
    delay = initial_s
    while True:
        yield min(maximum_s, delay * (1.0 + jitter * (2.0 * rand.random() - 1.0)))
        delay = min(maximum_s, delay * 2.0)


@dataclass(slots=True)
class _Pending:
    seq: int
    payload: bytes  # the encoded media message, resent byte for byte
    ts_us: int
    sent_at: float


class ResendBuffer:
    """Frames sent and not yet acknowledged, oldest first; bounded by media time and bytes."""

    def __init__(
        self, max_media_s: float = RESEND_MAX_MEDIA_S, max_bytes: int = RESEND_MAX_BYTES
    ) -> None:
        self.max_media_us = int(max_media_s * US_PER_S)
        self.max_bytes = max_bytes
        self._items: deque[_Pending] = deque()
        self.bytes = 0
        self.acked_seq = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def span_us(self) -> int:
        """Media time between the oldest and the newest unacknowledged frame."""
        if not self._items:
            return 0
        return max(0, self._items[-1].ts_us - self._items[0].ts_us)

    @property
    def full(self) -> bool:
        """True when the source should not be read until acks come."""
        return self.bytes >= self.max_bytes or self.span_us >= self.max_media_us

    def push(self, seq: int, payload: bytes, ts_us: int, sent_at: float) -> None:
        """Hold a frame about to be sent; ``seq`` must follow the last one pushed."""
        if self._items and seq != self._items[-1].seq + 1:
            raise ValueError(f"seq {seq} does not follow {self._items[-1].seq}")
        self._items.append(_Pending(seq, payload, ts_us, sent_at))
        self.bytes += len(payload)

    def ack(self, seq: int, now: float) -> list[float]:
        """Drop every frame up to ``seq``; returns their latencies (seconds since last sent)."""
        latencies = []
        self.acked_seq = max(self.acked_seq, seq)
        items = self._items
        while items and items[0].seq <= seq:
            item = items.popleft()
            self.bytes -= len(item.payload)
            latencies.append(now - item.sent_at)
        return latencies

    def above(self, seq: int) -> list[_Pending]:
        """The frames with a sequence number above ``seq``, oldest first, to resend."""
        return [item for item in self._items if item.seq > seq]


class Pacer:
    """Spaces frames by their timestamps against a monotonic clock, from the first frame on."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._origin: tuple[float, int] | None = None

    def delay(self, ts_us: int) -> float:
        """Seconds to wait before the frame at ``ts_us`` is due (never negative)."""
        now = self._clock()
        if self._origin is None:
            self._origin = (now, ts_us)
            return 0.0
        t0, ts0 = self._origin
        return max(0.0, t0 + (ts_us - ts0) / US_PER_S - now)
