"""Settings of the ingest layer: transports, sessions and recorders."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """WebSocket ingest limits and timing."""

    max_frame_bytes: int = 4 * 1024 * 1024
    # open ingest WebSockets (recording apps, waiting ones too, and channel publishers); one
    # more is answered 503 UNAVAILABLE with Retry-After before the upgrade
    max_connections: int = 1000
    hello_timeout_s: float = 10.0
    keepalive_s: float = 15.0
    queue_frames: int = 256  # per-session bound (~4 s of 720p15 + Opus): the socket read waits
    queue_bytes: int = 32 * 1024 * 1024  # ...and in bytes (256 frames could be 1 GiB of 4 MiB)
    tick_s: float = 0.025  # shortest write tick: one WAL fsync per tick per lane; acks wait
    gap_s: float = 3.0  # a pts jump larger than this starts a new discontinuity
    idle_end_s: float = 3600.0  # end a session nobody has touched for this long
    wal_rotate_bytes: int = 64 * 1024 * 1024  # a new WAL file past this size
    writer_lanes: int = 0  # writer processes (ingest.lanes); 0: one per core
    # sessions a lane takes before the next one is used (then the least busy): a lane's tick
    # costs a round trip and an fsync however few sessions it writes, so few sessions share
    # one lane; 1 spreads them evenly from the first
    lane_fill: int = 16
    # for tests only: a writer lane exits, as a crashing codec would, on a media frame whose
    # payload starts with ``ingest.lanes.FAILPOINT_CRASH``
    failpoints: bool = False


@dataclass(frozen=True, slots=True)
class RecorderSettings:
    """How recordings are cut and named."""

    segment_target_s: float = 4.0
    key_prefix: str = "recordings"
    # FFmpeg's AAC coder for Opus transcoded to AAC: "fast" (about half the CPU of "twoloop",
    # FFmpeg's default; a little lower quality: see README.md, Configuration)
    aac_coder: str = "fast"

    def __post_init__(self) -> None:
        from mixer.transcode import AAC_CODERS  # (imports PyAV: only when settings are built)

        if self.aac_coder not in AAC_CODERS:
            raise ValueError(
                f"recorder.aac_coder: expected one of {', '.join(AAC_CODERS)}, "
                f"got {self.aac_coder!r}"
            )
