"""The audio mixer: every user's audio at 48 kHz on one sample clock, summed, limited, AAC out.

Each input is resampled to 48 kHz in the output layout (PyAV's `AudioResampler`, any input
rate, format and layout) and placed on the output sample clock by its timestamps, so a user
who joins late or pauses lines up with the others and with the video. Sums are float32; a
limiter rides the gain down when the sum would pass the ceiling and back up slowly, with a
soft knee for what slips past its attack, so loud moments never hard-clip.

Synchronous and not thread-safe: used from its mix's worker thread.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from enum import IntEnum
from fractions import Fraction

import av
import numpy as np
from av.audio.codeccontext import AudioCodecContext
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler

from mixer.layout import check_number
from mixer.throttle import LogThrottle
from mixer.transcode import AAC_FRAME_SAMPLES, adts_header

log = logging.getLogger(__name__)

MIX_RATE_HZ = 48_000
US_PER_S = 1_000_000
CHUNK_SAMPLES = AAC_FRAME_SAMPLES  # The mix is made in AAC-frame-sized chunks.
# Input whose timestamps drift this far from the samples received is re-anchored (a gap or a
# clock jump); smaller jitter is ignored so the samples stay contiguous.
# An input whose next frame is placed this far from where its samples run on is placed anew
# (a gap of silence, or a cut); nearer, its samples stay contiguous (timestamps carry no
# jitter: they count samples). Under ingest.member_frames.LATE_US, so that a slow sender's
# track moved on by its clock follows at once rather than lagging into lateness.
RESYNC_SAMPLES = MIX_RATE_HZ * 15 // 1000  # 15 ms.
LIMIT_CEILING = 0.89  # -1 dBFS: headroom for the AAC encoder's own overshoot.
LIMIT_ATTACK_SAMPLES = 64  # 1.3 ms: fast enough to catch a transient, slow enough not to click.
LIMIT_RELEASE_S = 0.25  # Time constant of the gain coming back up after a loud moment.
SOFT_KNEE = 0.9  # Above this the soft saturator takes over (only on attack overshoot).
AAC_CODER = "twoloop"  # FFmpeg's default, named so that it stays put (see transcode.py).


class AudioProfile(IntEnum):
    """`audioProfile`: 48 kHz, music encoding; mono ~48 kbps, mono ~128 kbps, stereo ~192 kbps."""

    MONO_48K = 0
    MONO_128K = 1
    STEREO_192K = 2

    @property
    def channels(self) -> int:
        """Output channel count."""
        return 2 if self is AudioProfile.STEREO_192K else 1

    @property
    def bit_rate(self) -> int:
        """AAC bit rate in bits per second."""
        return (48_000, 128_000, 192_000)[self]

    @classmethod
    def from_json(
        cls, value: object, field: str = "clientRequest.recordingConfig.audioProfile"
    ) -> AudioProfile:
        """Validate `audioProfile` (default 0)."""
        if value is None:
            return cls.MONO_48K
        return cls(int(check_number(value, field, 0, 2, integer=True)))


def soft_clip(x: np.ndarray) -> np.ndarray:
    """Identity below the knee, then a tanh curve that reaches 1.0 only at infinity."""
    over = np.abs(x) > SOFT_KNEE
    if not over.any():
        return x
    out = x.copy()
    span = 1.0 - SOFT_KNEE
    mag = np.abs(x[over])
    out[over] = np.sign(x[over]) * (SOFT_KNEE + span * np.tanh((mag - SOFT_KNEE) / span))
    return out


class Limiter:
    """A peak limiter on float32 chunks: gain down fast when over the ceiling, up slowly."""

    def __init__(self, rate: int = MIX_RATE_HZ) -> None:
        self._gain = 1.0
        self._rate = rate

    @property
    def gain(self) -> float:
        """The gain at the end of the last chunk."""
        return self._gain

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Limit one chunk (channels x samples); returns a new array."""
        n = chunk.shape[-1]
        peak = float(np.abs(chunk).max()) if n else 0.0
        target = min(1.0, LIMIT_CEILING / peak) if peak > 0 else 1.0
        start = self._gain
        if target < start:
            # Attack: reach the target within a few samples, then hold it for the chunk.
            ramp = np.full(n, target, np.float32)
            k = min(n, LIMIT_ATTACK_SAMPLES)
            ramp[:k] = np.linspace(start, target, k, endpoint=False, dtype=np.float32)
            end = target
        else:
            # Release: move towards the target with the release time constant, linearly
            # within the chunk; never above the target, so no overshoot is released.
            end = start + (target - start) * (1.0 - math.exp(-n / (LIMIT_RELEASE_S * self._rate)))
            ramp = np.linspace(start, end, n, endpoint=False, dtype=np.float32)
        self._gain = end
        if start == 1.0 and end == 1.0:
            return soft_clip(chunk)
        return soft_clip(chunk * ramp)


@dataclass(slots=True)
class _Input:
    resampler: AudioResampler
    source: tuple[str, str, int]  # (sample format, layout, rate) the resampler was made for
    next_pos: int | None = None  # Where the next resampled sample lands on the mix clock.
    start: int = 0  # Mix position of buf[:, 0].
    buf: np.ndarray = field(default_factory=lambda: np.zeros((1, 0), np.float32))
    late_samples: int = 0


TRACK_SEPARATOR = "/"  # (in no uid: the channel protocols' uids have no "/")


def input_key(uid: str, track: str = "") -> str:
    """The mixer's input for one audio track of ``uid``: each track is an input of its own,
    summed with the others (two tracks laid end to end under one key ran at twice the rate,
    then were trimmed: a member's microphone and system audio came out garbled)."""
    return f"{uid}{TRACK_SEPARATOR}{track}" if track else uid


class AudioMixer:
    """Places each user's audio on one 48 kHz clock and mixes it in AAC-frame-sized chunks."""

    def __init__(self, profile: AudioProfile = AudioProfile.MONO_48K, origin_us: int = 0) -> None:
        self.profile = profile
        self.origin_us = origin_us  # Mix sample 0 is at this input time.
        self._layout = "stereo" if profile.channels == 2 else "mono"
        self._inputs: dict[str, _Input] = {}
        self._pos = 0  # Next mix sample to make.
        self._limiter = Limiter()
        self._late_log = LogThrottle()

    @property
    def position(self) -> int:
        """Samples mixed so far (the mix clock)."""
        return self._pos

    def position_of(self, t_us: int) -> int:
        """The mix sample at input time `t_us`."""
        return round((t_us - self.origin_us) * MIX_RATE_HZ / US_PER_S)

    def late_samples(self, uid: str) -> int:
        """Samples of `uid` (all its tracks) that arrived after their time was mixed (logged,
        not mixed)."""
        return sum(entry.late_samples for key, entry in self._inputs.items() if self._of(key, uid))

    @staticmethod
    def _of(key: str, uid: str) -> bool:
        return key == uid or key.startswith(uid + TRACK_SEPARATOR)

    def push(self, uid: str, frame: AudioFrame, t_us: int) -> None:
        """Take one decoded frame of `uid` whose first sample is at `t_us`."""
        entry = self._inputs.get(uid)
        source = (frame.format.name, frame.layout.name, frame.sample_rate)
        if entry is None or entry.source != source:
            # A resampler serves the format it first saw (one made for frames that need no
            # change passes any later frame through as it is): a member whose audio changes
            # format (another track, a reconnect over another transport) gets a new one.
            resampler = AudioResampler(format="fltp", layout=self._layout, rate=MIX_RATE_HZ)
            if entry is None:
                entry = self._inputs[uid] = _Input(resampler, source)
            else:
                log.info("audio of %s changed format %s → %s", uid, entry.source, source)
                entry.resampler, entry.source = resampler, source
        parts = [f.to_ndarray() for f in entry.resampler.resample(frame)]
        pos = self.position_of(t_us)
        if entry.next_pos is None or abs(pos - entry.next_pos) > RESYNC_SAMPLES:
            if entry.next_pos is not None:
                log.info("audio of %s re-anchored by %d samples", uid, pos - entry.next_pos)
            entry.next_pos = pos
        if not parts:
            return  # The resampler is holding the first samples back.
        samples = np.concatenate(parts, axis=1).astype(np.float32, copy=False)
        self._append(uid, entry, samples)

    def _append(self, uid: str, entry: _Input, samples: np.ndarray) -> None:
        assert entry.next_pos is not None  # Set by push before any append.
        at = entry.next_pos
        entry.next_pos = at + samples.shape[1]
        if at < self._pos:
            # Its time is mixed already: logged and counted, never dropped silently.
            late = min(samples.shape[1], self._pos - at)
            entry.late_samples += late
            if (held := self._late_log.allow(uid)) is not None:
                log.warning(
                    "%d samples of %s came after their time was mixed (and %d times more "
                    "since the last such warning)",
                    late,
                    uid,
                    held,
                )
            samples, at = samples[:, late:], at + late
        if samples.shape[1] == 0:
            return
        if entry.buf.shape[1] == 0:
            entry.start, entry.buf = at, samples
            return
        end = entry.start + entry.buf.shape[1]
        if at < end:  # Re-anchored back onto buffered samples: those stay.
            samples, at = samples[:, end - at :], end
            if samples.shape[1] == 0:
                return
        pieces = [entry.buf, np.zeros((samples.shape[0], at - end), np.float32), samples]
        entry.buf = np.concatenate(pieces, axis=1)

    def remove(self, uid: str) -> None:
        """Drop a user, every track of theirs (``input_key``); what they sent but was not
        mixed yet is mixed no more."""
        for key in [k for k in self._inputs if self._of(k, uid)]:
            del self._inputs[key]

    def mix_until(self, t_us: int) -> list[np.ndarray]:
        """Mix every whole chunk before `t_us`; each is float32 (channels x 1024), limited."""
        return self.mix_to(self.position_of(t_us))

    def mix_to(self, position: int) -> list[np.ndarray]:
        """Mix every whole chunk that ends at or before mix sample `position`."""
        chunks = []
        channels = self.profile.channels
        while self._pos + CHUNK_SAMPLES <= position:
            lo, hi = self._pos, self._pos + CHUNK_SAMPLES
            acc = np.zeros((channels, CHUNK_SAMPLES), np.float32)
            for entry in self._inputs.values():
                a, b = max(lo, entry.start), min(hi, entry.start + entry.buf.shape[1])
                if a < b:
                    acc[:, a - lo : b - lo] += entry.buf[:, a - entry.start : b - entry.start]
                if entry.start + entry.buf.shape[1] <= hi:
                    entry.start, entry.buf = hi, entry.buf[:, :0]
                elif entry.start < hi:
                    entry.buf = entry.buf[:, hi - entry.start :]
                    entry.start = hi
            chunks.append(self._limiter.process(acc))
            self._pos = hi
        return chunks


class AacEncoder:
    """Encodes mix chunks as AAC-LC per the audio profile; packets come out as ADTS frames."""

    def __init__(self, profile: AudioProfile) -> None:
        self.profile = profile
        encoder = av.CodecContext.create("aac", "w")
        assert isinstance(encoder, AudioCodecContext)  # PyAV typing only.
        encoder.sample_rate = MIX_RATE_HZ
        encoder.layout = "stereo" if profile.channels == 2 else "mono"
        encoder.format = "fltp"
        encoder.bit_rate = profile.bit_rate
        encoder.time_base = Fraction(1, MIX_RATE_HZ)
        encoder.options = {"aac_coder": AAC_CODER}
        self._encoder: AudioCodecContext | None = encoder
        self._layout = encoder.layout.name

    def encode(self, chunk: np.ndarray | None, position: int = 0) -> list[tuple[bytes, int]]:
        """Encode a chunk starting at mix sample `position` (None flushes); (ADTS, pts) pairs.

        The pts is in mix samples; the first packets may start before 0 (encoder priming).
        """
        if self._encoder is None:
            return []
        frame = None
        if chunk is not None:
            frame = AudioFrame.from_ndarray(
                np.ascontiguousarray(chunk, np.float32), format="fltp", layout=self._layout
            )
            frame.sample_rate = MIX_RATE_HZ
            frame.pts = position
            frame.time_base = Fraction(1, MIX_RATE_HZ)
        packets = self._encoder.encode(frame)
        if chunk is None:
            self._encoder = None
        channels = self.profile.channels
        out = []
        for packet in packets:
            payload = bytes(packet)
            out.append(
                (adts_header(len(payload), MIX_RATE_HZ, channels) + payload, packet.pts or 0)
            )
        return out
