"""HLS playlist rendering and parsing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mixer.errors import InvalidMedia
from mixer.playlist import Playlist, PlaylistSegment

START = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
LATER = datetime(2025, 1, 2, 3, 9, 0, tzinfo=UTC)


def _playlist() -> Playlist:
    p = Playlist()
    p.append(PlaylistSegment("a_00000.ts", 4.0, START))
    p.append(PlaylistSegment("a_00001.ts", 4.2, START))
    p.append(PlaylistSegment("a_00002.ts", 1.5, LATER, discontinuity=True))
    return p


def test_render_live() -> None:
    text = _playlist().render(end=False)
    assert text.splitlines() == [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        "#EXT-X-TARGETDURATION:5",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:EVENT",
        "#EXT-X-PROGRAM-DATE-TIME:2025-01-02T03:04:05.678Z",
        "#EXTINF:4.000,",
        "a_00000.ts",
        "#EXTINF:4.200,",
        "a_00001.ts",
        "#EXT-X-DISCONTINUITY",
        "#EXT-X-PROGRAM-DATE-TIME:2025-01-02T03:09:00.000Z",
        "#EXTINF:1.500,",
        "a_00002.ts",
    ]


def test_render_end_and_target_rounding() -> None:
    p = Playlist([PlaylistSegment("x.ts", 4.0000001)])
    text = p.render(end=True)
    assert "#EXT-X-TARGETDURATION:4" in text
    assert text.endswith("#EXT-X-ENDLIST\n")
    assert "PLAYLIST-TYPE" not in text


def test_parse_round_trip() -> None:
    original = _playlist()
    parsed = Playlist.parse(original.render(end=True))
    assert parsed.ended
    assert [s.uri for s in parsed.segments] == [s.uri for s in original.segments]
    assert [s.discontinuity for s in parsed.segments] == [False, False, True]
    assert parsed.segments[0].program_date_time == START
    assert parsed.segments[2].program_date_time == LATER
    assert parsed.render(end=True) == original.render(end=True)


@pytest.mark.parametrize(
    "text", ["", "not a playlist", "#EXTM3U\nseg.ts\n", "#EXTM3U\n#EXTINF:x,\n"]
)
def test_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(InvalidMedia):
        Playlist.parse(text)
