"""The audio mixer: resampling, placement on the clock, limiting, and AAC per audioProfile."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from av.audio.frame import AudioFrame

from mixer.audiomix import (
    CHUNK_SAMPLES,
    LIMIT_CEILING,
    MIX_RATE_HZ,
    AacEncoder,
    AudioMixer,
    AudioProfile,
    Limiter,
)
from mixer.errors import ConfigError

FRAME_US = 20_000
# Share of a signal's energy outside its tones' bins: what counts as "no clipping artefacts".
MAX_DISTORTION_SHARE = 1e-3
# The encoder's average rate may stray this far from the profile's on noise.
BIT_RATE_TOLERANCE = 0.25


def tone_frame(
    freq: float, rate: int, start: int, n: int, *, amp: float = 0.3, layout: str = "mono"
) -> AudioFrame:
    """`n` samples of a sine from sample `start`, as s16 (what decoders often give)."""
    t = np.arange(start, start + n) / rate
    x = amp * np.sin(2 * np.pi * freq * t)
    channels = 2 if layout == "stereo" else 1
    pcm = (np.tile(x, (channels, 1)).T.reshape(1, -1) * 32767).astype(np.int16)
    frame = AudioFrame.from_ndarray(pcm, format="s16", layout=layout)
    frame.sample_rate = rate
    return frame


def spectrum(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude spectrum (Hann window) and its frequencies."""
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / MIX_RATE_HZ), mag


def band_energy(x: np.ndarray, freqs_hz: list[float], width_hz: float = 20) -> float:
    """Share of energy within `width_hz` of the given frequencies."""
    f, mag = spectrum(x)
    power = mag**2
    mask = np.zeros_like(f, bool)
    for hz in freqs_hz:
        mask |= np.abs(f - hz) < width_hz
    return float(power[mask].sum() / power.sum())


def _run(
    mixer: AudioMixer, inputs: dict[str, tuple[float, int, str]], seconds: float
) -> np.ndarray:
    """Push every input in 20 ms frames at its own rate; return the whole mix."""
    chunks = []
    for k in range(round(seconds * 1_000_000 / FRAME_US)):
        for uid, (freq, rate, layout) in inputs.items():
            n = rate * FRAME_US // 1_000_000
            mixer.push(uid, tone_frame(freq, rate, k * n, n, layout=layout), k * FRAME_US)
        chunks += mixer.mix_until(k * FRAME_US)
    return np.concatenate(chunks, axis=1)


def test_every_tone_is_in_the_mix_whatever_its_rate() -> None:
    inputs = {"a": (440.0, 44_100, "stereo"), "b": (1000.0, 16_000, "mono"),
              "c": (2500.0, 48_000, "mono")}  # fmt: skip
    mix = _run(AudioMixer(AudioProfile.MONO_48K), inputs, 1.0)
    assert mix.shape[0] == 1 and mix.shape[1] >= 0.9 * MIX_RATE_HZ
    x = mix[0, 4096:]
    f, mag = spectrum(x)
    peaks = sorted(f[np.argsort(mag)[-30:]])
    for hz in (440, 1000, 2500):
        assert any(abs(p - hz) < 5 for p in peaks), (hz, peaks)
    # The three tones hold nearly all the energy: no aliasing or resampling junk.
    assert band_energy(x, [440, 1000, 2500]) > 0.999
    # Equal levels in, equal levels out (the stereo input is downmixed, not doubled).
    levels = [mag[np.abs(f - hz) < 20].max() for hz in (440, 1000, 2500)]
    assert max(levels) / min(levels) < 1.5


def test_stereo_profile_keeps_both_channels() -> None:
    mix = _run(AudioMixer(AudioProfile.STEREO_192K), {"a": (440.0, 48_000, "mono")}, 0.5)
    assert mix.shape[0] == 2
    assert np.allclose(mix[0], mix[1])
    assert np.abs(mix).max() > 0.2


def test_late_joiner_lands_at_its_time() -> None:
    mixer = AudioMixer(AudioProfile.MONO_48K)
    chunks = []
    for k in range(50):  # 1 s; user b starts at 0.5 s.
        mixer.push("a", tone_frame(440, 48_000, 0, 960, amp=0.0), k * FRAME_US)
        if k >= 25:
            mixer.push("b", tone_frame(1000, 48_000, (k - 25) * 960, 960), k * FRAME_US)
        chunks += mixer.mix_until(k * FRAME_US)
    x = np.concatenate(chunks, axis=1)[0]
    onset = int(np.argmax(np.abs(x) > 0.01))
    assert abs(onset - MIX_RATE_HZ // 2) <= 48  # Within 1 ms.


@pytest.mark.parametrize("first", ["fltp", "s16"])
def test_a_member_whose_audio_changes_format_is_mixed_on(first: str) -> None:
    """Mono 48 kHz (as AAC decodes: the resampler has nothing to do), then stereo 44.1 kHz
    s16 (another track, a reconnect over WebRTC): both are mixed at their pitch, the
    second as well as the first, instead of a failure that ended the mix for everyone."""
    mixer, chunks = AudioMixer(AudioProfile.MONO_48K), []
    for k in range(50):
        if k < 25:
            frame = tone_frame(440, 48_000, k * 960, 960)
            if first == "fltp":
                frame = AudioFrame.from_ndarray(
                    frame.to_ndarray().astype(np.float32) / 32768, format="flt", layout="mono"
                )
                frame = AudioFrame.from_ndarray(frame.to_ndarray(), format="fltp", layout="mono")
                frame.sample_rate = 48_000
        else:
            frame = tone_frame(1000, 44_100, (k - 25) * 882, 882, layout="stereo")
        mixer.push("a", frame, k * FRAME_US)
        chunks += mixer.mix_until(k * FRAME_US)
    x = np.concatenate(chunks, axis=1)
    assert x.shape[0] == 1
    before, after = x[0, 4096 : MIX_RATE_HZ // 2 - 1024], x[0, MIX_RATE_HZ // 2 + 2048 :]
    assert band_energy(before, [440]) > 0.99 and band_energy(after, [1000]) > 0.99
    # at its level: downmixed (swresample's -3 dB per channel: 0.3 x 2 x 0.707), not doubled
    assert 0.2 < np.abs(after).max() < 0.45


def test_samples_after_their_time_are_counted_not_mixed() -> None:
    mixer = AudioMixer(AudioProfile.MONO_48K)
    mixer.push("a", tone_frame(440, 48_000, 0, 4800), 0)
    assert len(mixer.mix_until(100_000)) == 4800 // CHUNK_SAMPLES
    mixer.push("b", tone_frame(440, 48_000, 0, 960), 0)  # 20 ms, all already mixed.
    assert mixer.late_samples("b") == 960


def test_limiter_is_transparent_below_the_ceiling() -> None:
    x = (0.8 * np.sin(np.arange(4096) / 10)).astype(np.float32)[None]
    limiter = Limiter()
    out = np.concatenate([limiter.process(x[:, i : i + 1024]) for i in range(0, 4096, 1024)], 1)
    assert np.array_equal(out, x)


def test_loud_sums_are_limited_without_clipping_artefacts() -> None:
    inputs = {"a": (440.0, 48_000, "mono"), "b": (660.0, 48_000, "mono"),
              "c": (990.0, 48_000, "mono")}  # fmt: skip
    mixer = AudioMixer(AudioProfile.MONO_48K)
    chunks = []
    for k in range(100):
        for uid, (freq, rate, _) in inputs.items():
            mixer.push(uid, tone_frame(freq, rate, k * 960, 960, amp=0.6), k * FRAME_US)
        chunks += mixer.mix_until(k * FRAME_US)
    x = np.concatenate(chunks, axis=1)[0]
    assert np.abs(x).max() < 1.0
    steady = x[MIX_RATE_HZ // 2 :]
    assert np.abs(steady).max() <= LIMIT_CEILING + 1e-3
    # Hard clipping the same sum spreads energy over many harmonics; the limiter does not.
    t = np.arange(len(steady)) / MIX_RATE_HZ
    raw = sum(0.6 * np.sin(2 * np.pi * hz * t) for hz in (440, 660, 990))
    tones = [440, 660, 990]
    assert 1 - band_energy(np.clip(raw, -1, 1), tones) > 10 * MAX_DISTORTION_SHARE
    assert 1 - band_energy(steady, tones) < MAX_DISTORTION_SHARE


@pytest.mark.parametrize("profile", list(AudioProfile))
def test_aac_per_profile(tmp_path: Path, profile: AudioProfile) -> None:
    encoder = AacEncoder(profile)
    rng = np.random.default_rng(1)
    seconds = 2
    data = bytearray()
    pts = []
    for i in range(seconds * MIX_RATE_HZ // CHUNK_SAMPLES):
        noise = rng.uniform(-0.5, 0.5, (profile.channels, CHUNK_SAMPLES)).astype(np.float32)
        for packet, pts_samples in encoder.encode(noise, i * CHUNK_SAMPLES):
            data += packet
            pts.append(pts_samples)
    for packet, pts_samples in encoder.encode(None):
        data += packet
        pts.append(pts_samples)
    assert pts == sorted(pts) and pts[0] <= 0
    path = tmp_path / "mix.aac"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = 0
        for frame in container.decode(stream):
            assert frame.sample_rate == MIX_RATE_HZ
            assert frame.layout.nb_channels == profile.channels
            samples += frame.samples
    assert samples >= seconds * MIX_RATE_HZ
    rate = len(data) * 8 / seconds
    assert abs(rate - profile.bit_rate) / profile.bit_rate < BIT_RATE_TOLERANCE


def test_profile_from_json() -> None:
    assert AudioProfile.from_json(None) is AudioProfile.MONO_48K
    assert AudioProfile.from_json(2) is AudioProfile.STEREO_192K
    for bad in (3, -1, 1.5, "1", True):
        with pytest.raises(ConfigError) as info:
            AudioProfile.from_json(bad)
        assert info.value.field == "clientRequest.recordingConfig.audioProfile"
