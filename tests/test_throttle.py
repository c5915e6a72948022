"""Warnings about streams of frames: one line per interval, counting the rest."""

from __future__ import annotations

import logging

import pytest
from test_audiomix import tone_frame

from mixer import throttle
from mixer.audiomix import AudioMixer, AudioProfile
from mixer.throttle import LogThrottle


def test_one_warning_per_interval_and_key_with_the_count_held() -> None:
    now = [0.0]
    gate = LogThrottle(10.0, clock=lambda: now[0])
    assert gate.allow("a") == 0  # the first goes through
    assert [gate.allow("a") for _ in range(3)] == [None, None, None]
    assert gate.allow("b") == 0  # keys apart
    now[0] = 10.0
    assert gate.allow("a") == 3  # then one, saying how many it stands for


def test_keys_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(throttle, "MAX_KEYS", 3)
    gate = LogThrottle(10.0, clock=lambda: 0.0)
    for key in "abcd":
        assert gate.allow(key) == 0
    assert len(gate._keys) == 3 and "a" not in gate._keys


def test_late_audio_of_a_member_is_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Every 20 ms frame of a member that comes late was a warning line (50 a second)."""
    mixer = AudioMixer(AudioProfile.MONO_48K)
    mixer.push("a", tone_frame(440, 48_000, 0, 4800), 0)
    mixer.mix_until(100_000)
    with caplog.at_level(logging.WARNING, logger="mixer.audiomix"):
        for k in range(50):
            mixer.push("b", tone_frame(440, 48_000, k * 960, 960), 0)  # (all of it late)
    assert mixer.late_samples("b") > 0
    assert sum("came after their time" in r.getMessage() for r in caplog.records) == 1
