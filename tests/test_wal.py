"""The shared write-ahead log: records survive, recoveries are all or nothing, old files go."""

from __future__ import annotations

from pathlib import Path

from ingest.session_writer import replay_from
from ingest.wal import CUT, MEDIA, TRACK, Wal


def media(sid: str, seq: int) -> list[object]:
    return [sid, MEDIA, seq, 0, seq * 1000, seq * 1000, seq == 1, 0.0, b"x"]


def test_records_come_back_grouped_by_session(tmp_path: Path) -> None:
    wal = Wal(tmp_path)
    assert wal.open() == {}
    for seq in (1, 2):
        wal.append(media("a", seq))
        wal.append(media("b", seq))
    wal.sync()
    with open(next(tmp_path.glob("wal-*.bin")), "ab") as f:
        f.write(b"\x99\x01")  # a torn record: the crash itself
    again = Wal(tmp_path)
    got = again.open()
    assert [r[2] for r in got["a"]] == [1, 2] and [r[2] for r in got["b"]] == [1, 2]
    again.close()
    wal.close()


def test_a_finished_recovery_supersedes_the_old_files(tmp_path: Path) -> None:
    first = Wal(tmp_path)
    first.open()
    first.append(media("a", 1))
    first.close()
    second = Wal(tmp_path)
    records = second.open()
    for rec in records["a"]:
        second.append(rec)  # what a recorder does when it replays
    second.append(media("a", 2))
    second.finish_recovery()
    assert len(list(tmp_path.glob("wal-*.bin"))) == 1
    second.close()
    third = Wal(tmp_path)
    assert [r[2] for r in third.open()["a"]] == [1, 2]  # once each
    third.close()


def test_records_replayed_from_elsewhere_are_durable_once_recovery_ends(tmp_path: Path) -> None:
    """A lane with no old files of its own replays another's (the lane count changed): that
    directory is deleted right after, so the end of recovery must sync these records too."""
    wal = Wal(tmp_path / "lane-0")
    assert wal.open() == {}
    wal.append(media("a", 1))  # replayed from the old lane's directory
    wal.finish_recovery()
    reader = Wal(tmp_path / "lane-0")
    assert [r[2] for r in reader.open()["a"]] == [1]  # on disk, not in the writer's buffer
    reader.close()
    wal.close()


def test_a_recovery_cut_short_is_dropped(tmp_path: Path) -> None:
    first = Wal(tmp_path)
    first.open()
    first.append(media("a", 1))
    first.append(media("a", 2))
    first.close()
    second = Wal(tmp_path)
    second.open()
    second.append(media("a", 1))  # replayed half, then the crash: no "recovered" record
    second.sync()
    third = Wal(tmp_path)
    assert [r[2] for r in third.open()["a"]] == [1, 2]
    assert not (tmp_path / f"wal-{second.index:06d}.bin").exists()
    third.close()
    second.close()  # the crashed run's handle, for the test's tidiness


def test_release_keeps_what_an_open_session_needs(tmp_path: Path) -> None:
    wal = Wal(tmp_path, rotate_bytes=100)
    wal.open()
    files = [wal.append(media("a", seq)) for seq in range(1, 8)]
    wal.sync()
    assert files[-1] > files[0]  # it rotated
    wal.release([files[3]])
    left = sorted(int(p.stem.split("-")[1]) for p in tmp_path.glob("wal-*.bin"))
    assert left[0] == files[3] and left[-1] == wal.index
    wal.close()


def test_replay_starts_at_the_open_segment() -> None:
    recs = [
        ["s", CUT, 0],
        ["s", TRACK, {"id": 0}],
        media("s", 1),
        ["s", CUT, 1],
        ["s", TRACK, {"id": 0}],
        media("s", 2),
        ["s", CUT, 2],
        media("s", 3),
    ]
    assert replay_from(recs, 0) == recs[1:]  # nothing spooled: all of it
    assert replay_from(recs, 2) == [media("s", 3)]
    assert replay_from(recs, 1)[0] == ["s", TRACK, {"id": 0}]


def test_replay_starts_at_the_frame_a_cut_written_later_names() -> None:
    """Frames are logged before they are written: a cut made while writing frame 2, after
    frame 3 was logged, names frame 2 and the tracks; the replay starts there, not after the
    cut's own record, and knows the tracks before any frame."""
    track = {"id": 0}
    recs = [
        ["s", CUT, 0, 0, []],
        ["s", TRACK, track],
        media("s", 1),
        media("s", 2),
        media("s", 3),
        ["s", CUT, 1, 2, [track]],
        media("s", 4),
        ["s", CUT, 2, 4, [track]],
    ]
    assert replay_from(recs, 0) == recs[1:]
    assert replay_from(recs, 1) == [["s", TRACK, track], *recs[3:]]
    assert replay_from(recs, 2) == [["s", TRACK, track], *recs[6:]]
