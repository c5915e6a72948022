"""The publisher's pure parts: resend buffer, backoff, pacing, URLs."""

from __future__ import annotations

import itertools
import random

import pytest

from ingest.publisher import FINAL_CLOSE_CODES, RETRYABLE_CLOSE_CODES
from ingest.publisher_parts import Pacer, ResendBuffer, backoff_delays, ws_url


def test_resend_buffer_acks_cumulatively_and_reports_latency() -> None:
    buf = ResendBuffer(max_media_s=10, max_bytes=1000)
    for seq in range(1, 6):
        buf.push(seq, b"x" * 10, ts_us=seq * 100_000, sent_at=float(seq))
    assert len(buf) == 5 and buf.bytes == 50
    assert buf.ack(3, now=10.0) == [9.0, 8.0, 7.0]
    assert len(buf) == 2 and buf.bytes == 20 and buf.acked_seq == 3
    assert [p.seq for p in buf.above(3)] == [4, 5]
    assert [p.seq for p in buf.above(4)] == [5]
    assert buf.ack(2, now=11.0) == []  # an old ack changes nothing
    assert buf.acked_seq == 3


def test_resend_buffer_rejects_gaps() -> None:
    buf = ResendBuffer()
    buf.push(1, b"a", 0, 0.0)
    with pytest.raises(ValueError):
        buf.push(3, b"a", 0, 0.0)


def test_resend_buffer_is_full_by_media_time_or_bytes() -> None:
    by_time = ResendBuffer(max_media_s=1.0, max_bytes=1 << 30)
    by_time.push(1, b"a", 0, 0.0)
    by_time.push(2, b"a", 999_999, 0.0)
    assert not by_time.full
    by_time.push(3, b"a", 1_000_000, 0.0)
    assert by_time.full
    by_time.ack(1, 0.0)
    assert not by_time.full
    by_bytes = ResendBuffer(max_media_s=100, max_bytes=100)
    by_bytes.push(1, b"a" * 60, 0, 0.0)
    assert not by_bytes.full
    by_bytes.push(2, b"a" * 40, 1, 0.0)
    assert by_bytes.full


def test_backoff_doubles_to_the_cap() -> None:
    delays = list(itertools.islice(backoff_delays(0.1, 5.0, jitter=0.0), 9))
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    jittered = list(itertools.islice(backoff_delays(0.1, 5.0, rng=random.Random(1)), 20))
    assert all(0.09 <= d <= 5.0 for d in jittered)


def test_pacer_spaces_frames_by_timestamp() -> None:
    now = [100.0]
    pacer = Pacer(clock=lambda: now[0])
    assert pacer.delay(5_000_000) == 0.0  # the first frame sets the origin
    assert pacer.delay(5_500_000) == pytest.approx(0.5)
    now[0] = 100.4
    assert pacer.delay(5_500_000) == pytest.approx(0.1)
    now[0] = 103.0
    assert pacer.delay(6_000_000) == 0.0  # late frames go at once


def test_ws_url_and_close_code_sets() -> None:
    assert ws_url("http://127.0.0.1:8080/") == "ws://127.0.0.1:8080/v1/ingest"
    assert ws_url("https://rec.example") == "wss://rec.example/v1/ingest"
    assert not RETRYABLE_CLOSE_CODES & FINAL_CLOSE_CODES
    assert {1001, 1006, 1011, 4007, 4010, 4012} <= RETRYABLE_CLOSE_CODES
