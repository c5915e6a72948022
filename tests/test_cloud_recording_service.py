"""The cloud recording service without HTTP: a channel of aiortc publishers recorded in mix and
individual modes into a bucket of the test S3 server; every listed file is read back."""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path
from typing import Any

import av
import pytest
from s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3
from webrtc_peer import publish_into, wait_video

from api.cloud_recording import CloudFailure, CloudRecordingService, member_outputs
from ingest.channel_mix import UidSelector
from ingest.channels import ChannelRegistry
from ingest.webrtc import WebRtcSettings, WhipServer
from mixer.layout import LayoutMode, LayoutSpec
from mixer.mix_config import FileType, MixConfig
from mixer.playlist import Playlist
from storage.objects_local import LocalObjectStore
from storage.registry import StoreRegistry
from storage.spool import Spool
from storage.spool_disk import DATA_SUFFIX, MANIFEST_SUFFIX
from storage.vendors import parse_storage_config

pytestmark = pytest.mark.slow

WAIT_S = 30.0


def storage_config(s3: SeaweedS3, bucket: str) -> Any:
    return parse_storage_config(
        {
            "vendor": 11,
            "region": 0,
            "bucket": bucket,
            "accessKey": ACCESS_KEY,
            "secretKey": SECRET_KEY,
            "fileNamePrefix": ["directory1", "directory2"],
            "extensionParams": {"endpoint": s3.endpoint},
        }
    )


@pytest.fixture
async def rig(tmp_path: Path) -> Any:
    whip = WhipServer(ChannelRegistry(), WebRtcSettings(host_addresses="127.0.0.1"))
    stores = StoreRegistry(
        tmp_path / "stores", LocalObjectStore(tmp_path / "objects"), private_endpoints=True
    )
    await stores.start()
    spool = Spool(tmp_path / "spool", stores.resolve, retry_base_s=0.05, retry_max_s=0.5)
    await spool.start()
    service = CloudRecordingService(whip.registry, stores, spool, tmp_path / "work")
    yield whip, service
    await service.aclose()
    await spool.aclose()
    await stores.aclose()
    await whip.aclose()


async def publish(whip: WhipServer, uid: str, rgb: tuple[int, int, int]) -> Any:
    return await publish_into(whip, "app", "room", uid, rgb)


async def wait_frames(whip: WhipServer, uids: set[str], count: int) -> None:
    await wait_video(whip.registry, "app", "room", uids, count, WAIT_S)


def read_back(s3: SeaweedS3, bucket: str, names: list[str], dest: Path) -> list[Path]:
    client = s3.client()
    paths = []
    for name in names:
        obj = client.get_object(Bucket=bucket, Key=f"directory1/directory2/{name}")
        (dest / name).write_bytes(obj["Body"].read())
        paths.append(dest / name)
    return paths


async def test_mix_mode_into_the_users_bucket(
    rig: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    whip, service = rig
    res = await service.acquire("app", "room", "527841", None)
    mix = MixConfig(width=320, height=180, layout=LayoutSpec(LayoutMode.ADAPTIVE))
    session = await service.start(
        "app", res.resource_id, "mix", "room", "527841", storage_config(s3, s3_bucket),
        mix=mix, file_types=frozenset({FileType.HLS, FileType.MP4}), segment_s=1.0,
    )  # fmt: skip
    with pytest.raises(CloudFailure) as err:
        await service.start(
            "app", res.resource_id, "mix", "room", "527841", storage_config(s3, s3_bucket)
        )
    assert err.value.code == 7
    peers = [await publish(whip, "red", (255, 0, 0)), await publish(whip, "blue", (0, 0, 255))]
    try:
        await wait_frames(whip, {"red", "blue"}, 60)
        status = await service.stop(session)
    finally:
        for pc in peers:
            await pc.close()
    assert status == "uploaded"
    mode, files = session.file_list()
    assert mode == "json"
    names = [f["fileName"] for f in files]  # type: ignore[index]
    assert names[0] == f"{session.sid}_room.m3u8" and names[1].endswith(".mp4")
    assert all(f["uid"] == "0" and f["mixedAllUser"] for f in files)  # type: ignore[index]
    paths = await asyncio.to_thread(read_back, s3, s3_bucket, names, tmp_path)
    playlist = paths[0].read_text()
    segments = [line for line in playlist.splitlines() if line.endswith(".ts")]
    assert "#EXT-X-ENDLIST" in playlist and len(segments) >= 2
    for segment in segments:  # <sid>_<cname>_<UTC YYYYMMDDhhmmssSSS>.ts, as that API names them
        assert re.fullmatch(rf"{session.sid}_room_\d{{17}}\.ts", segment), segment
    await asyncio.to_thread(read_back, s3, s3_bucket, segments, tmp_path)  # all uploaded
    with av.open(str(paths[1])) as container:
        assert sum(1 for _ in container.decode(video=0)) >= 20
    with pytest.raises(CloudFailure) as err:
        await service.stop(session)
    assert err.value.code == 49


def decoded(paths: list[Path], kind: str) -> list[av.frame.Frame]:
    """Every frame of ``kind`` in these segments; each must hold that kind only."""
    frames: list[av.frame.Frame] = []
    for path in paths:
        with av.open(str(path)) as container:
            assert [s.type for s in container.streams] == [kind], path.name
            frames += container.decode(container.streams[0])
    return frames


def segment_names(playlist: Path) -> list[str]:
    return [line for line in playlist.read_text().splitlines() if line.endswith(".ts")]


async def test_individual_mode_records_separate_audio_and_video(
    rig: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    whip, service = rig
    res = await service.acquire("app", "room", "1", None)
    session = await service.start(
        "app", res.resource_id, "individual", "room", "1", storage_config(s3, s3_bucket),
        segment_s=1.0,
    )  # fmt: skip
    pc = await publish(whip, "alice", (0, 255, 0))
    try:
        await wait_frames(whip, {"alice"}, 60)
        recorder = session.members["alice"]
        assert await service.stop(session) == "uploaded"
    finally:
        await pc.close()
    # aiortc decodes before anyone sees the media: encoded once, H.264 and AAC
    assert (recorder.stats.decoders_opened, recorder.stats.encoders_opened) == (0, 2)
    _, files = session.file_list()
    base = f"{session.sid}_room__uid_s_alice__uid_e"
    assert sorted((f["fileName"], f["trackType"]) for f in files) == [  # type: ignore[index]
        (f"{base}_audio.m3u8", "audio"),
        (f"{base}_video.m3u8", "video"),
    ]  # HLS only in individual mode: no MP4
    for f in files:
        assert f["uid"] == "alice" and f["isPlayable"] and not f["mixedAllUser"]  # type: ignore[index]
        assert f["sliceStartTime"] >= session.started_ms  # type: ignore[index]
    audio, video = await asyncio.to_thread(
        read_back, s3, s3_bucket, [f"{base}_audio.m3u8", f"{base}_video.m3u8"], tmp_path
    )
    for playlist in (audio, video):
        assert "#EXT-X-ENDLIST" in playlist.read_text()
        for name in segment_names(playlist):
            assert re.fullmatch(rf"{playlist.stem}_\d{{17}}\.ts", name), name
    video_segments = await asyncio.to_thread(
        read_back, s3, s3_bucket, segment_names(video), tmp_path
    )
    audio_segments = await asyncio.to_thread(
        read_back, s3, s3_bucket, segment_names(audio), tmp_path
    )
    pictures = await asyncio.to_thread(decoded, video_segments, "video")
    sounds = await asyncio.to_thread(decoded, audio_segments, "audio")
    video_s = len(pictures) / 30  # aiortc's 30 fps, kept
    audio_s = sum(f.samples for f in sounds) / 48_000
    assert 1.8 <= video_s <= 3.5 and abs(audio_s - video_s) < 0.5, (video_s, audio_s)
    assert pictures[len(pictures) // 2].to_ndarray(format="rgb24")[120, 160][1] > 180  # green


async def test_resource_rules(rig: Any, s3: SeaweedS3, s3_bucket: str) -> None:
    _, service = rig
    with pytest.raises(CloudFailure) as err:
        service.resource("app", "garbage")
    assert err.value.code == 1001
    res = await service.acquire("app", "room", "1", None)
    with pytest.raises(CloudFailure) as err:
        service.resource("other-app", res.resource_id)
    assert err.value.code == 1003
    with pytest.raises(CloudFailure) as err:
        await service.start(
            "app", res.resource_id, "mix", "room", "2", storage_config(s3, s3_bucket)
        )
    assert err.value.code == 432
    session = await service.start(
        "app", res.resource_id, "individual", "room", "1", storage_config(s3, s3_bucket)
    )
    with pytest.raises(CloudFailure) as err:
        await service.stop(session)
    assert err.value.code == 435  # nobody published


async def test_idle_channel_ends_the_recording(rig: Any, s3: SeaweedS3, s3_bucket: str) -> None:
    whip, service = rig
    events: list[tuple[int, dict[str, Any]]] = []

    async def notify(session: Any, event_type: int, details: dict[str, Any]) -> None:
        events.append((event_type, details))

    service._notify = notify
    res = await service.acquire("app", "room", "1", None)
    session = await service.start(
        "app", res.resource_id, "individual", "room", "1", storage_config(s3, s3_bucket),
        segment_s=1.0, max_idle_s=1.0,
    )  # fmt: skip
    pc = await publish(whip, "alice", (0, 255, 0))
    await wait_frames(whip, {"alice"}, 30)
    await pc.close()  # the only member leaves: the channel goes idle
    assert session.idle_task is not None
    await asyncio.wait_for(session.idle_task, WAIT_S)
    assert session.exit_reason == "idle" and session.ended_at is not None
    assert [e for e, _ in events] == [40, 30, 42, 41, 31, 11]
    assert events[2][1]["uid"] == "alice" and events[2][1]["startUtcMs"] > 0  # slice start
    assert events[3][1]["leaveCode"] == 2
    assert {f["uid"] for f in events[4][1]["fileList"]} == {"alice"}


def snapshot_notices(service: Any) -> list[dict[str, Any]]:
    """The details of every snapshot notice (45) the service raises from now on."""
    notices: list[dict[str, Any]] = []

    async def notify(session: Any, event_type: int, details: dict[str, Any]) -> None:
        if event_type == 45:
            notices.append(details)

    service._notify = notify
    return notices


async def test_snapshots_at_the_capture_interval(
    rig: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    whip, service = rig
    notices = snapshot_notices(service)
    res = await service.acquire("app", "room", "1", None)
    session = await service.start(
        "app", res.resource_id, "individual", "room", "1", storage_config(s3, s3_bucket),
        segment_s=1.0, snapshot_every_s=0.5,
    )  # fmt: skip
    pc = await publish(whip, "alice", (0, 255, 0))
    try:
        await wait_frames(whip, {"alice"}, 60)  # two seconds at aiortc's 30 fps
        await service.stop(session)
    finally:
        await pc.close()
    assert len(session.snapshots) >= 3 and [n["fileName"] for n in notices] == session.snapshots
    name = session.snapshots[0]
    assert name.startswith(f"{session.sid}_room__uid_s_alice__uid_e_video_") and name.endswith(
        ".jpg"
    )
    paths = await asyncio.to_thread(read_back, s3, s3_bucket, [name], tmp_path)
    with av.open(str(paths[0])) as container:
        image = next(iter(container.decode(video=0))).to_ndarray(format="rgb24")
    assert image.shape[:2] == (240, 320) and image[120, 160][1] > 180  # the green that was sent


async def test_snapshots_only_records_no_playlist(
    rig: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    whip, service = rig
    notices = snapshot_notices(service)
    res = await service.acquire("app", "room", "1", None)
    interval_s = 0.5
    session = await service.start(
        "app", res.resource_id, "individual", "room", "1", storage_config(s3, s3_bucket),
        outputs=member_outputs(record=False, snapshot_every_s=interval_s),
    )  # fmt: skip
    pc = await publish(whip, "alice", (255, 0, 0))
    try:
        await wait_frames(whip, {"alice"}, 60)  # two seconds
        recorder = session.members["alice"]
        assert await service.stop(session) == "uploaded"
    finally:
        await pc.close()
    assert session.file_list() == ("json", [])  # no playlist: snapshots only
    stats = recorder.stats
    assert stats.frames_encoded == 0 and stats.encoders_opened == 0  # nothing recorded
    names = session.snapshots
    assert [n["fileName"] for n in notices] == names and 3 <= len(names) <= 6
    stamps = [int(n["ts"]) for n in notices]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(gaps) >= interval_s * 1000 - 40 and max(gaps) <= interval_s * 1000 + 100, gaps
    client = s3.client()
    listed = await asyncio.to_thread(
        client.list_objects_v2, Bucket=s3_bucket, Prefix="directory1/directory2/"
    )
    keys = sorted(o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", []))
    assert keys == sorted(names)  # JPGs only: no playlist, no segment
    paths = await asyncio.to_thread(read_back, s3, s3_bucket, names[-1:], tmp_path)
    with av.open(str(paths[0])) as container:
        image = next(iter(container.decode(video=0))).to_ndarray(format="rgb24")
    assert image[120, 160][0] > 180  # the red that was sent


def playlist_seconds(playlist: Path) -> float:
    return Playlist.parse(playlist.read_text()).duration_s


async def test_update_starts_and_stops_recorders_mid_way(
    rig: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    whip, service = rig
    res = await service.acquire("app", "room", "1", None)
    only_red = UidSelector(frozenset({"red"}))
    session = await service.start(
        "app", res.resource_id, "individual", "room", "1", storage_config(s3, s3_bucket),
        segment_s=1.0, audio_uids=only_red, video_uids=only_red,
    )  # fmt: skip
    peers = [await publish(whip, "red", (255, 0, 0)), await publish(whip, "blue", (0, 0, 255))]
    try:
        await wait_frames(whip, {"red", "blue"}, 60)
        assert set(session.members) == {"red"}
        # red keeps its audio and loses its video; blue is recorded from now on
        both = UidSelector(frozenset({"red", "blue"}))
        await service.update_subscriptions(session, both, UidSelector(frozenset({"blue"})))
        assert set(session.members) == {"red", "blue"}
        assert session.members["red"].kinds == (True, False)
        await wait_frames(whip, {"red", "blue"}, 60)
        # blue leaves the lists altogether: its recorder ends, its files stay listed
        await service.update_subscriptions(session, only_red, UidSelector(frozenset()))
        assert set(session.members) == {"red"}
        await wait_frames(whip, {"red"}, 30)
        assert await service.stop(session) == "uploaded"
    finally:
        for pc in peers:
            await pc.close()
    _, files = session.file_list()
    listed = {(f["uid"], f["trackType"]): f["fileName"] for f in files}  # type: ignore[index]
    assert set(listed) == {("red", "audio"), ("red", "video"), ("blue", "audio"),
                           ("blue", "video")}  # fmt: skip
    names = list(listed.values())
    fetched = await asyncio.to_thread(read_back, s3, s3_bucket, names, tmp_path)
    paths = dict(zip(listed, fetched, strict=True))
    seconds = {key: playlist_seconds(path) for key, path in paths.items()}
    assert all("#EXT-X-ENDLIST" in path.read_text() for path in paths.values())
    # red's video: the first 2 s; red's audio: all ~5 s; blue: the 2 s in the middle
    assert seconds[("red", "audio")] - seconds[("red", "video")] > 2.0, seconds
    assert 1.0 < seconds[("blue", "video")] < seconds[("red", "audio")] - 2.0, seconds
    blue_segments = await asyncio.to_thread(
        read_back, s3, s3_bucket, segment_names(paths[("blue", "video")]), tmp_path
    )
    picture = (await asyncio.to_thread(decoded, blue_segments[:1], "video"))[0]
    assert picture.to_ndarray(format="rgb24")[120, 160][2] > 180  # blue's own video


async def test_a_failing_bucket_is_backed_up_then_caught_up(rig: Any, tmp_path: Path) -> None:
    whip, service = rig
    own = SeaweedS3(tmp_path / "weed")
    await asyncio.to_thread(own.start)
    try:
        bucket = await asyncio.to_thread(own.create_bucket, "userbucket")
        service.stop_upload_timeout_s = 2.0
        res = await service.acquire("app", "room", "1", None)
        mix = MixConfig(width=320, height=180, layout=LayoutSpec(LayoutMode.ADAPTIVE))
        session = await service.start(
            "app", res.resource_id, "mix", "room", "1", storage_config(own, bucket),
            mix=mix, segment_s=1.0,
        )  # fmt: skip
        pc = await publish(whip, "red", (255, 0, 0))
        try:
            await wait_frames(whip, {"red"}, 45)
            await asyncio.to_thread(own.kill)  # the user's bucket goes away before stop
            # a file waiting in the spool that the session's folder no longer has (a segment
            # of a run before a restart, say) is backed up too
            earlier = f"{session.sid}_room_earlier.ts"
            await service.spool.add_bytes(
                earlier, b"an earlier run", group=session.sid,
                store_id=session.store_id,
            )  # fmt: skip
            status = await service.stop(session)
        finally:
            await pc.close()
        assert status == "backuped"
        store = service.stores.default
        backup = [i.key async for i in store.list(f"backup/app/{session.sid}/")]
        playlist = f"{session.sid}_room.m3u8"
        assert f"backup/app/{session.sid}/{playlist}" in backup
        assert sum(k.endswith(".ts") for k in backup) >= 3
        earlier_copy = await store.get_bytes(f"backup/app/{session.sid}/{earlier}")
        assert earlier_copy == b"an earlier run"

        await asyncio.to_thread(own.start)  # the bucket is back: the spool catches up
        assert await service.spool.wait_group(session.sid, WAIT_S)
        obj = await asyncio.to_thread(
            own.client().get_object, Bucket=bucket, Key=f"directory1/directory2/{playlist}"
        )
        assert b"#EXT-X-ENDLIST" in obj["Body"].read()
        obj = await asyncio.to_thread(
            own.client().get_object, Bucket=bucket, Key=f"directory1/directory2/{earlier}"
        )
        assert obj["Body"].read() == b"an earlier run"
    finally:
        await asyncio.to_thread(own.kill)


async def test_an_unreadable_spool_manifest_keeps_every_storage_config(
    tmp_path: Path, s3: SeaweedS3, s3_bucket: str
) -> None:
    """A spool item whose manifest does not parse is left for a person, and may be for any
    bucket: no storage config (no keys) is forgotten while it is there."""
    stores = StoreRegistry(
        tmp_path / "stores", LocalObjectStore(tmp_path / "objects"), private_endpoints=True
    )
    await stores.start()
    store_id = await stores.register(storage_config(s3, s3_bucket))
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / f"{1:020d}{DATA_SUFFIX}").write_bytes(b"a segment")
    (tmp_path / "spool" / f"{1:020d}{MANIFEST_SUFFIX}").write_text('{"key": "cut sh')
    spool = Spool(tmp_path / "spool", stores.resolve)
    await spool.start()
    service = CloudRecordingService(ChannelRegistry(), stores, spool, tmp_path / "work")
    try:
        assert spool.unreadable == 1
        await service.acquire("app", "room", "527841")  # looks for keys nothing needs
        assert stores.registered() == {store_id}
        assert (tmp_path / "stores" / f"{store_id}.json").exists()
    finally:
        await service.aclose()
        await spool.aclose()
        await stores.aclose()
