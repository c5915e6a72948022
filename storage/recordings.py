"""Browser-extension recordings as the metadata store keeps them, and their time-ordered ids."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

UUID7_COUNTER_BITS = 12  # rand_a: a counter within one millisecond keeps ids strictly rising
_COUNTER_MAX = (1 << UUID7_COUNTER_BITS) - 1


class RecordingStatus(StrEnum):
    """Where a recording is: the seed's four states."""

    UPLOADING = "uploading"  # events stored, video expected at the presigned URL
    PROCESSING = "processing"  # video confirmed; the processing job owns it
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RecordingRow:
    """One recording: the seed's fields plus where its objects are and how processing went."""

    recording_id: str
    tenant_id: str
    user_id: str
    status: str  # a RecordingStatus value
    started_at: datetime
    created_at: datetime
    updated_at: datetime
    events_key: str
    project_id: str | None = None
    name: str | None = None
    ended_at: datetime | None = None
    duration_ms: int = 0
    event_count: int = 0
    has_video: bool = False
    has_audio: bool = False
    navigations: list[Any] = field(default_factory=list)
    journey_id: str | None = None
    events_bytes: int = 0
    events_stored: int = 0
    video_key: str | None = None
    video_duration_ms: int | None = None
    failure_reason: str | None = None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class RecordingPage:
    """One page of a listing; ``more`` tells whether another page follows."""

    rows: list[RecordingRow]
    more: bool


class Uuid7Source:
    """RFC 9562 UUIDv7 strings that rise strictly, even within one millisecond or when the clock
    steps back, so that text order of ids is the order they were made in."""

    def __init__(self) -> None:
        self._last_ms = 0
        self._counter = 0

    def observe(self, latest: str | None) -> None:
        """Continue after ``latest`` (the greatest id already stored), if there is one."""
        if latest:
            value = uuid.UUID(latest).int
            self._last_ms = max(self._last_ms, value >> 80)
            self._counter = max(self._counter, (value >> 64) & _COUNTER_MAX)

    def next(self) -> str:
        """A fresh id greater than every id this source made or observed."""
        now_ms = time.time_ns() // 1_000_000
        if now_ms > self._last_ms:
            self._last_ms, self._counter = now_ms, 0
        elif self._counter < _COUNTER_MAX:
            self._counter += 1
        else:  # 4096 ids in one millisecond: borrow the next one
            self._last_ms, self._counter = self._last_ms + 1, 0
        rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (self._last_ms << 80) | (0x7 << 76) | (self._counter << 64) | (0b10 << 62) | rand_b
        return str(uuid.UUID(int=value))
