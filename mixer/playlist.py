"""HLS media playlist model (RFC 8216): render what was written, parse it back after a restart."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mixer.errors import InvalidMedia

HLS_VERSION = 3
DURATION_DECIMALS = 3


@dataclass(frozen=True, slots=True)
class PlaylistSegment:
    """One media segment: its URI, length, start time on the wall clock, and discontinuity flag."""

    uri: str
    duration_s: float
    program_date_time: datetime | None = None
    discontinuity: bool = False


def format_date_time(moment: datetime) -> str:
    """Format a moment as ISO 8601 in UTC with milliseconds and a `Z`, as HLS players expect."""
    utc = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_date_time(text: str) -> datetime:
    """Parse an ISO 8601 date-time as written by `format_date_time` (or with an offset)."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidMedia(f"bad EXT-X-PROGRAM-DATE-TIME {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(slots=True)
class Playlist:
    """An HLS media playlist that grows segment by segment (EVENT while live, ENDLIST at end)."""

    segments: list[PlaylistSegment] = field(default_factory=list)
    media_sequence: int = 0
    ended: bool = False

    def append(self, segment: PlaylistSegment) -> None:
        """Add a finished segment at the end."""
        self.segments.append(segment)

    @property
    def duration_s(self) -> float:
        """Total media time of all segments."""
        return sum(s.duration_s for s in self.segments)

    @property
    def target_duration_s(self) -> int:
        """`EXT-X-TARGETDURATION`: the longest segment rounded up (RFC 8216 4.3.3.1), at least 1."""
        longest = max((s.duration_s for s in self.segments), default=1.0)
        # Round first so 4.0000001 from float sums does not become 5.
        return max(1, math.ceil(round(longest, DURATION_DECIMALS)))

    def render(self, end: bool = False) -> str:
        """Render the playlist text; `end` adds `EXT-X-ENDLIST` and drops the EVENT type."""
        lines = [
            "#EXTM3U",
            f"#EXT-X-VERSION:{HLS_VERSION}",
            f"#EXT-X-TARGETDURATION:{self.target_duration_s}",
            f"#EXT-X-MEDIA-SEQUENCE:{self.media_sequence}",
        ]
        if not end:
            lines.append("#EXT-X-PLAYLIST-TYPE:EVENT")
        for i, seg in enumerate(self.segments):
            if seg.discontinuity and i > 0:
                lines.append("#EXT-X-DISCONTINUITY")
            # Date on the first segment and after each discontinuity, where the wall clock jumps.
            if seg.program_date_time is not None and (i == 0 or seg.discontinuity):
                lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{format_date_time(seg.program_date_time)}")
            lines.append(f"#EXTINF:{seg.duration_s:.{DURATION_DECIMALS}f},")
            lines.append(seg.uri)
        if end:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Playlist:
        """Read back a media playlist written by `render` (or another simple media playlist)."""
        lines = [line.strip() for line in text.splitlines()]
        if not lines or lines[0] != "#EXTM3U":
            raise InvalidMedia("not an HLS playlist: missing #EXTM3U")
        playlist = cls()
        duration: float | None = None
        date: datetime | None = None
        discontinuity = False
        for line in lines[1:]:
            if not line:
                continue
            if line.startswith("#EXTINF:"):
                try:
                    duration = float(line[len("#EXTINF:") :].split(",", 1)[0])
                except ValueError as exc:
                    raise InvalidMedia(f"bad EXTINF line {line!r}") from exc
            elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
                date = parse_date_time(line.split(":", 1)[1])
            elif line == "#EXT-X-DISCONTINUITY":
                discontinuity = True
            elif line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
                playlist.media_sequence = int(line.split(":", 1)[1])
            elif line == "#EXT-X-ENDLIST":
                playlist.ended = True
            elif line.startswith("#"):
                continue  # Tags this model does not keep.
            else:
                if duration is None:
                    raise InvalidMedia(f"segment {line!r} has no #EXTINF")
                playlist.append(PlaylistSegment(line, duration, date, discontinuity))
                duration, date, discontinuity = None, None, False
        return playlist
