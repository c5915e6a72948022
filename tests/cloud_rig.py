"""A cloud recording service on its own, with its metadata store, spool and stores on one data
folder, for tests that restart it often and fast (``open`` after ``close`` is the restart; its
channels start empty), and small S3 helpers for them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from media import encode_clip
from s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3

from api.cloud_recording import CloudRecordingService
from ingest.channels import ChannelRegistry, MediaFrame, Member, TrackInfo, Transport
from storage.meta_sqlite import SqliteMetaStore
from storage.objects_local import LocalObjectStore
from storage.registry import StoreRegistry
from storage.spool import Spool
from storage.vendors import StorageConfig, parse_storage_config

WAIT_S = 10.0  # upper bound on waiting for a notice; normally well under a second


class Rig:
    """A cloud recording service with a store, a spool and stores on one data folder; ``open``
    again after ``aclose`` is the service restarted (its channels start empty)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.notices: list[tuple[str, int, dict[str, Any]]] = []
        self.changed = asyncio.Condition()

    async def open(self) -> CloudRecordingService:
        self.meta = SqliteMetaStore(self.data / "meta.sqlite3")
        await self.meta.open()
        self.stores = StoreRegistry(  # (the test S3 server is on loopback)
            self.data / "stores", LocalObjectStore(self.data / "objects"), private_endpoints=True
        )
        await self.stores.start()
        self.spool = Spool(
            self.data / "spool", self.stores.resolve, retry_base_s=0.05, retry_max_s=0.2
        )
        await self.spool.start()
        self.registry = ChannelRegistry()
        self.service = CloudRecordingService(
            self.registry, self.stores, self.spool, self.data / "work", notify=self.notify,
            store=self.meta,
        )  # fmt: skip
        self.service.segment_s = 1.0
        await self.service.open()
        return self.service

    async def notify(self, session: Any, event_type: int, details: dict[str, Any]) -> None:
        async with self.changed:
            self.notices.append((session.sid, event_type, details))
            self.changed.notify_all()

    def of(self, sid: str) -> list[int]:
        return [e for s, e, _ in self.notices if s == sid]

    async def wait_for(self, sid: str, event_type: int) -> None:
        await self.wait_for_count(sid, event_type, 1)

    async def wait_for_count(self, sid: str, event_type: int, count: int) -> None:
        async with asyncio.timeout(WAIT_S), self.changed:
            await self.changed.wait_for(lambda: self.of(sid).count(event_type) >= count)

    async def close(self, *, suspend: bool = True) -> None:
        if suspend:
            await self.service.aclose()
        await self.spool.aclose()
        await self.stores.aclose()
        await self.meta.aclose()

    async def join(self, cname: str, uid: str) -> Member:
        """A WebSocket-style member with H.264 and AAC tracks (join before the start: a
        recorder is subscribed to it when the start returns)."""
        member = await self.registry.join("app", cname, uid, Transport.WS)
        self.registry.set_track("app", cname, member, TrackInfo("v", "video", "h264"))
        self.registry.set_track("app", cname, member, TrackInfo("a", "audio", "aac"))
        return member

    def send(self, cname: str, member: Member, duration_s: float) -> None:
        """A clip of the member's, handed to the channel at once."""
        channel = self.registry.get("app", cname)
        assert channel is not None
        for f in encode_clip("h264", duration_s=duration_s, audio_codec="aac").frames:
            track = "v" if f.kind == "video" else "a"
            frame = MediaFrame(member.uid, track, f.kind, f.data, f.pts_us, f.keyframe, f.codec)
            channel.publish(member, frame)


def storage(s3: SeaweedS3, bucket: str) -> StorageConfig:
    return parse_storage_config(
        {"vendor": 11, "region": 0, "bucket": bucket, "accessKey": ACCESS_KEY,
         "secretKey": SECRET_KEY, "extensionParams": {"endpoint": s3.endpoint}}
    )  # fmt: skip


def read(s3: SeaweedS3, bucket: str, key: str) -> str:
    return str(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode())


def read_bytes(s3: SeaweedS3, bucket: str, key: str) -> bytes:
    return bytes(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def delete_bucket(s3: SeaweedS3, bucket: str) -> None:
    client = s3.client()
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    for obj in listed:
        client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)
