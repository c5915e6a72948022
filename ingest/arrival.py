"""Lip sync for WebRTC members: place decoded frames by when their RTP packets arrived.

aiortc hands over decoded frames whose pts count from each track's first RTP timestamp, on
clocks that share nothing, and late: audio waits in a jitter buffer until four packets are in
(80 ms), video only until a frame is whole. Placing each track by when its first *decoded* frame
turned up therefore recorded audio ~60 ms behind video. An ``ArrivalClock`` notes when the
packets of a receiver's first RTP timestamps came off the network, and turns a decoded frame's
pts into that arrival time (µs, wall clock) plus the frame's distance from the first one: both
tracks of a member then sit on one clock, off only by what the sender and the network add.

It wraps aiortc's receiver (``RTCRtpReceiver._handle_rtp_packet``) and reads the receiver's
timestamp origin, both private: aiortc is pinned to 1.16 in pyproject.toml and
``tests/test_av_sync_webrtc.py`` measures the result. If either is missing, frames keep the
per-track placement they had before (``wall_us`` answers None).
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

US = 1_000_000
RTP_WRAP = 1 << 32
NOTED_TIMESTAMPS = 512  # first timestamps remembered until the first frame is anchored


class ArrivalClock:
    """Arrival times of one receiver's first RTP timestamps, and the anchor they give."""

    def __init__(self, receiver: Any) -> None:
        self._receiver = receiver
        self._arrivals: dict[int, float] = {}
        self._anchor_us: int | None = None  # wall µs of pts 0
        self._failed = False
        handle = getattr(receiver, "_handle_rtp_packet", None)
        if handle is None:
            self._failed = True
            return

        async def noted(packet: Any, arrival_time_ms: int) -> None:
            if self._anchor_us is None and len(self._arrivals) < NOTED_TIMESTAMPS:
                self._arrivals.setdefault(packet.timestamp, time.time())
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = noted

    def wall_us(self, pts: int, rate: int) -> int | None:
        """Wall-clock µs at which the packets of the frame with ``pts`` (in 1/``rate``) arrived,
        as placed from the first frame; None when it cannot be told."""
        if self._anchor_us is None:
            if self._failed:
                return None
            mapper = getattr(self._receiver, "_RTCRtpReceiver__timestamp_mapper", None)
            origin = getattr(mapper, "_origin", None)
            if origin is None:
                self._failed = True
                log.warning("WebRTC lip sync off: aiortc's timestamp origin is not readable")
                return None
            arrival = self._arrivals.get((pts + origin) % RTP_WRAP)
            if arrival is None:
                self._failed = True  # the frame's packets came before we looked: no anchor
                return None
            self._anchor_us = int(arrival * US) - pts * US // rate
            self._arrivals.clear()
        return self._anchor_us + pts * US // rate
