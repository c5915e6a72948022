"""A mix's MP4s across a crash.

A mix builds its MP4s from its own segments and hands them to the spool when its run ends:
at stop, or when the server suspends it for a restart. A run that a crash cut short built
none, though its segments are in the playlist. They are still in the session's folder: the
resumed recording builds the MP4s of the run it lost from them, numbered on.

The folder's note (``mp4s.json``) says which segments are in an MP4 already (``covered``: a
suspended run's, and what each recovery built) and which MP4s a recovery has promised
(``planned``: key → segments). A recovery writes its plan, then the session's row lists the
keys, then it builds them in the background: a crash on the way leaves a plan whose key the
row lists (built again under that key) or does not (planned again). Functions here block: run
them in a thread.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mixer.mix import MP4_MAX_BYTES, MP4_MAX_DURATION_S
from mixer.playlist import PlaylistSegment
from storage.durable import write_atomic

NOTE = "mp4s.json"


@dataclass(slots=True)
class Note:
    """What the folder's note holds; ``found``: it was there (a folder of an older version
    has none)."""

    covered: set[str] = field(default_factory=set)
    planned: dict[str, list[str]] = field(default_factory=dict)
    found: bool = False


def read_note(directory: Path) -> Note:
    try:
        raw = json.loads((directory / NOTE).read_bytes())
    except FileNotFoundError:
        return Note()
    return Note(set(raw["covered"]), {k: list(v) for k, v in raw["planned"].items()}, True)


def write_note(directory: Path, note: Note) -> None:
    data = {"covered": sorted(note.covered), "planned": note.planned}
    write_atomic(directory / NOTE, json.dumps(data).encode())


def mark_covered(directory: Path, names: Sequence[str], done: str | None = None) -> None:
    """Note that the segments ``names`` are in an MP4 handed to the spool (``done``: the key
    of the plan that built it, fulfilled)."""
    note = read_note(directory)
    note.covered.update(names)
    if done is not None:
        note.planned.pop(done, None)
    write_note(directory, note)


def lost_parts(
    directory: Path,
    listed: Sequence[PlaylistSegment],
    note: Note,
    earlier_mp4s: bool,
    max_duration_s: float = MP4_MAX_DURATION_S,
    max_bytes: int = MP4_MAX_BYTES,
) -> list[list[Path]]:
    """The segments of the playlist ``listed`` that are in the folder and in no MP4 (nor
    planned for one), in playlist order, cut into MP4 parts as a mix cuts them (~2 hours or
    ~2 GB) and at every discontinuity (one part never spans two runs). A folder without a
    note but with ``earlier_mp4s`` is an older version's, which cannot tell which runs have
    theirs: nothing is built again rather than something twice."""
    if not note.found and earlier_mp4s:
        return []
    segments = list(listed)
    taken = note.covered.union(*note.planned.values())
    parts: list[list[Path]] = []
    part: list[Path] = []
    seconds = size = 0.0
    for segment in segments:
        path = directory / segment.uri
        if segment.discontinuity and part:
            parts.append(part)
            part, seconds, size = [], 0.0, 0.0
        if segment.uri in taken or not path.is_file():
            continue
        part.append(path)
        seconds += segment.duration_s
        size += path.stat().st_size
        if seconds >= max_duration_s or size >= max_bytes:
            parts.append(part)
            part, seconds, size = [], 0.0, 0.0
    if part:
        parts.append(part)
    return parts
