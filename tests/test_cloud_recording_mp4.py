"""Which segments a crashed mix run leaves for MP4s of its own (``api.cloud_recording_mp4``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from api.cloud_recording_mp4 import Note, lost_parts, mark_covered, read_note, write_note
from mixer.playlist import PlaylistSegment

WHEN = datetime(2026, 11, 23, tzinfo=UTC)


def playlist(folder: Path, runs: list[int], seconds: float = 1.0) -> list[PlaylistSegment]:
    """Segments of ``runs`` (a count each), a discontinuity opening every run after the first;
    each file holds 100 bytes."""
    out = []
    for run, count in enumerate(runs):
        for i in range(count):
            name = f"r{run}_{i}.ts"
            (folder / name).write_bytes(b"x" * 100)
            out.append(PlaylistSegment(name, seconds, WHEN, discontinuity=run > 0 and i == 0))
    return out


def names(parts: list[list[Path]]) -> list[list[str]]:
    return [[p.name for p in part] for part in parts]


def test_a_part_never_spans_two_runs_and_the_size_bound_cuts_too(tmp_path: Path) -> None:
    listed = playlist(tmp_path, [3, 2])
    assert names(lost_parts(tmp_path, listed, Note(), False)) == [
        ["r0_0.ts", "r0_1.ts", "r0_2.ts"], ["r1_0.ts", "r1_1.ts"]
    ]  # fmt: skip
    assert names(lost_parts(tmp_path, listed, Note(), False, max_bytes=200)) == [
        ["r0_0.ts", "r0_1.ts"], ["r0_2.ts"], ["r1_0.ts", "r1_1.ts"]
    ]  # fmt: skip
    assert names(lost_parts(tmp_path, listed, Note(), False, max_duration_s=3)) == [
        ["r0_0.ts", "r0_1.ts", "r0_2.ts"], ["r1_0.ts", "r1_1.ts"]
    ]  # fmt: skip


def test_covered_planned_and_missing_segments_are_left_out(tmp_path: Path) -> None:
    listed = playlist(tmp_path, [2, 3])
    (tmp_path / "r1_2.ts").unlink()  # listed, but not in the folder
    write_note(tmp_path, Note({"r0_0.ts", "r0_1.ts"}, {"x_001.mp4": ["r1_0.ts"]}))
    note = read_note(tmp_path)
    assert note.found
    assert names(lost_parts(tmp_path, listed, note, True)) == [["r1_1.ts"]]
    mark_covered(tmp_path, ["r1_0.ts"], done="x_001.mp4")
    again = read_note(tmp_path)
    assert again.planned == {} and "r1_0.ts" in again.covered


def test_a_folder_an_older_version_left_builds_nothing_twice(tmp_path: Path) -> None:
    listed = playlist(tmp_path, [2, 2])
    assert lost_parts(tmp_path, listed, read_note(tmp_path), earlier_mp4s=True) == []
    # no MP4 yet: the one run there is was never built
    assert len(lost_parts(tmp_path, listed[:2], read_note(tmp_path), earlier_mp4s=False)) == 1


def test_names_with_spaces_survive_the_note(tmp_path: Path) -> None:
    mark_covered(tmp_path, ["sid_my room_20261123.ts"])
    assert read_note(tmp_path).covered == {"sid_my room_20261123.ts"}
