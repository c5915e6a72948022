"""Seed 002: ``/v1/recordings``, browser-extension captures (rrweb events, optional tab video).

Mounted as a sub-application so that its answers keep the seed API's own error shape
(``{"error": {"code", "message", "field"}}``) and its own tenant-bound auth, apart from the
``rpcStatus`` middleware of the screen-recording API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from storage.errors import ObjectNotFound, StorageError
from storage.objects import ObjectStore
from storage.recordings import RecordingRow, RecordingStatus

from .auth import Principal
from .bodies import ACCEPT_ENCODING, coding_refused, expect_checked, readable_body
from .keys import API_KEYS, META, STORE
from .objects_route import PLAYLIST_TYPE, PutRefusal, absolute_url, presigned_playlist
from .recordings_events import EVENTS_CONTENT_TYPE, BodyError, decompress_stream, parse_upload
from .recordings_jobs import VideoProcessor
from .recordings_schema import (
    RecordingsError,
    create_fields,
    from_body_error,
    list_query,
    not_found,
    recording_json,
)

log = logging.getLogger(__name__)

PREFIX = "/v1/recordings"
# The create body (events inline) may be this large; larger gets 413. 256 MiB holds hours of
# rrweb events; it is spooled to disk as it arrives, never held in memory.
MAX_BODY_BYTES = 256 * 1024**2
BODY_CHUNK_BYTES = 1024 * 1024
LINK_EXPIRY_S = 3600  # presigned links; the server sets ``[storage] presign_expiry_s``
KEY_PREFIX = "captures"  # object keys: captures/{tenant_id}/{recording_id}/...
_PRINCIPAL = web.RequestKey("recordings.principal", Principal)


@dataclass(slots=True)
class RecordingService:
    """What the routes need beyond the shared stores; limits are attributes tests may lower."""

    tmp_dir: Path
    processor: VideoProcessor
    max_body_bytes: int = MAX_BODY_BYTES
    link_expiry_s: int = LINK_EXPIRY_S  # the video upload URL and the download links


RECORDINGS = web.AppKey("recordings", RecordingService)


def prepare_tmp(tmp_dir: Path) -> None:
    """Make the spool folder of request bodies, emptied of what a crash left mid-upload.
    Blocking: run it in a thread."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    for leftover in tmp_dir.iterdir():
        if leftover.is_file():
            _remove(leftover)


def object_prefix(tenant_id: str, recording_id: str) -> str:
    """Every object of one recording lives under this prefix."""
    return f"{KEY_PREFIX}/{tenant_id}/{recording_id}/"


@web.middleware
async def recordings_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tenant auth on every route, and every failure in the seed API's error shape."""
    try:
        principal = await request.config_dict[API_KEYS].identify_header(
            request.headers.get("Authorization")
        )
        if principal is None:
            return _unauthorized()
        request[_PRINCIPAL] = principal
        return await handler(request)
    except RecordingsError as exc:
        return exc.response()
    except StorageError as exc:
        log.warning("storage error on %s %s: %s", request.method, request.path, exc)
        status = 503 if exc.status in (503, 507) else 500
        return RecordingsError(status, "storage_unavailable", "object storage failed").response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 400:  # (api.bodies: a body that cannot be read)
            return RecordingsError(400, "validation_error", exc.reason, "body").response()
        code = {
            404: "not_found",
            405: "method_not_allowed",
            408: "request_timeout",
            413: "payload_too_large",
            415: "unsupported_media_type",
        }
        kept = {
            k: v for k, v in exc.headers.items() if k in ("Accept-Encoding", "Allow", "Retry-After")
        }
        return RecordingsError(
            exc.status, code.get(exc.status, "bad_request"), exc.reason
        ).response(kept or None)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return RecordingsError(500, "internal", "internal error").response()


def _unauthorized() -> web.Response:
    return RecordingsError(
        401, "unauthorized", "missing or invalid API key: send Authorization: Bearer <key>"
    ).response({"WWW-Authenticate": 'Bearer realm="reelhouse"'})


def _principal(request: web.Request) -> Principal:
    principal: Principal = request[_PRINCIPAL]
    return principal


async def _load(request: web.Request) -> RecordingRow:
    recording_id = request.match_info["id"]
    try:
        recording_id = str(uuid.UUID(recording_id))
    except ValueError:
        raise not_found() from None  # not an id we could have made
    row = await request.config_dict[META].get_recording(recording_id, _principal(request).tenant_id)
    if row is None:
        raise not_found()
    return row


def _too_large(limit: int) -> RecordingsError:
    return RecordingsError(
        413, "payload_too_large", f"request body is larger than the {limit} byte limit"
    )


async def _spool_body(request: web.Request, dest: Path, limit: int) -> None:
    """Write the body to ``dest`` as it arrives (a file write per chunk, in a thread)."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    size = 0
    await asyncio.to_thread(dest.write_bytes, b"")
    with readable_body(request):
        async for chunk in request.content.iter_chunked(BODY_CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            await asyncio.to_thread(append, dest, chunk)


def append(path: Path, data: bytes) -> None:
    """Add ``data`` to the end of a file, opened and closed in this call: no file stays open
    across an await, so a request cancelled mid-upload leaves no open handle behind."""
    with open(path, "ab") as f:
        f.write(data)


def _remove(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def _may_create(request: web.Request) -> web.Response | None:
    """Whether a create's body may come (``Expect: 100-continue``): a tenant key and an
    announced size within the limit, as the middleware and ``_spool_body`` check them."""
    keys = request.config_dict[API_KEYS]
    if await keys.identify_header(request.headers.get("Authorization")) is None:
        return _unauthorized()
    limit = request.config_dict[RECORDINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return _too_large(limit).response()
    if (reason := coding_refused(request)) is not None:  # (before the body, not after it)
        return RecordingsError(415, "unsupported_media_type", reason).response(ACCEPT_ENCODING)
    return None


async def create_recording(request: web.Request) -> web.Response:
    """``POST /v1/recordings``: store the events compressed; hand out the video upload URL."""
    service = request.config_dict[RECORDINGS]
    meta, store = request.config_dict[META], request.config_dict[STORE]
    who = _principal(request)
    token = uuid.uuid4().hex
    body, events = service.tmp_dir / f"{token}.json", service.tmp_dir / f"{token}.zst"
    try:
        await _spool_body(request, body, service.max_body_bytes)
        try:
            parsed = await asyncio.to_thread(parse_upload, body, events)
        except BodyError as exc:
            raise from_body_error(exc) from None
        except RecursionError:
            raise from_body_error(BodyError("body", "request body is nested too deeply")) from None
        fields = create_fields(parsed)
        recording_id = meta.new_recording_id()
        prefix = object_prefix(who.tenant_id, recording_id)
        info = await store.put_file(prefix + "events.json.zst", events, EVENTS_CONTENT_TYPE)
    finally:
        await asyncio.to_thread(_remove, body, events)
    now = datetime.now(UTC)
    has_video = fields["has_video"]
    row = RecordingRow(
        recording_id=recording_id,
        tenant_id=who.tenant_id,
        user_id=who.user_id,
        status=RecordingStatus.UPLOADING if has_video else RecordingStatus.READY,
        created_at=now,
        updated_at=now,
        events_key=info.key,
        events_bytes=parsed.raw_bytes,
        events_stored=info.size,
        video_key=prefix + "video/original" if has_video else None,
        **fields,
    )
    try:
        await meta.create_recording(row)
    except BaseException:
        await store.delete(info.key)  # no row will ever point at it
        raise
    body_out: dict[str, Any] = {
        "id": recording_id,
        "status": row.status,
        "video_upload_url": await _upload_url(request, store, row),
    }
    return web.json_response(body_out, status=201, headers={"Location": f"{PREFIX}/{recording_id}"})


async def _upload_url(request: web.Request, store: ObjectStore, row: RecordingRow) -> str | None:
    if row.video_key is None:
        return None
    expiry = request.config_dict[RECORDINGS].link_expiry_s
    url = await store.presigned_url(row.video_key, "PUT", expiry)
    return None if url is None else absolute_url(request, url)


async def list_recordings(request: web.Request) -> web.Response:
    """``GET /v1/recordings``: newest first; ``next_cursor`` is the last id of the page."""
    limit, cursor, project_id, status = list_query(request.query)
    page = await request.config_dict[META].list_recordings(
        _principal(request).tenant_id,
        limit,
        before=cursor,
        project_id=project_id,
        status=status,
    )
    return web.json_response(
        {
            "recordings": [recording_json(row) for row in page.rows],
            "next_cursor": page.rows[-1].recording_id if page.more else None,
        }
    )


async def get_recording(request: web.Request) -> web.Response:
    """``GET /v1/recordings/{id}``, with links to the media where there is some."""
    row = await _load(request)
    store = request.config_dict[STORE]
    body = recording_json(row)
    if row.status == RecordingStatus.UPLOADING:
        body["video_upload_url"] = await _upload_url(request, store, row)
    if row.status == RecordingStatus.READY and row.has_video:
        prefix = object_prefix(row.tenant_id, row.recording_id)
        links = {"video_url": row.video_key, "thumbnail_url": prefix + "thumbnail.jpg"}
        expires_s = request.config_dict[RECORDINGS].link_expiry_s
        for name, key in links.items():
            url = await store.presigned_url(key or "", "GET", expires_s)
            body[name] = None if url is None else absolute_url(request, url)
        body["hls_url"] = absolute_url(request, f"{PREFIX}/{row.recording_id}/video/index.m3u8")
        body["video_duration_ms"] = row.video_duration_ms
    return web.json_response(body)


async def stream_events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/recordings/{id}/events``: the stored array, decompressed as it is sent."""
    row = await _load(request)
    store = request.config_dict[STORE]
    chunks = decompress_stream(store.stream(row.events_key), asyncio.to_thread)
    async with contextlib.aclosing(chunks):
        try:
            first = await anext(chunks, b"")
        except ObjectNotFound:
            log.error("events of recording %s are missing from storage", row.recording_id)
            raise RecordingsError(500, "internal", "the recording's events are missing") from None
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        if request.method != "HEAD":  # (aiohttp sends what is written, even to a HEAD)
            await resp.write(first)
            async for chunk in chunks:
                await resp.write(chunk)
        await resp.write_eof()
    return resp


async def hls_playlist(request: web.Request) -> web.Response:
    """``GET /v1/recordings/{id}/video/index.m3u8``: the HLS playlist with each segment as a
    presigned URL, so that a player needs the API key for this one request only."""
    row = await _load(request)
    if row.status != RecordingStatus.READY or not row.has_video:
        raise RecordingsError(409, "not_ready", f"recording video is {row.status}, not ready")
    store = request.config_dict[STORE]
    prefix = object_prefix(row.tenant_id, row.recording_id) + "hls/"
    key = prefix + "index.m3u8"
    text = (await store.get_bytes(key)).decode()
    expires_s = request.config_dict[RECORDINGS].link_expiry_s
    body = await presigned_playlist(request, store, key, text, expires_s)
    return web.Response(text=body, content_type=PLAYLIST_TYPE)


async def confirm_video(request: web.Request) -> web.Response:
    """``POST /v1/recordings/{id}/video/confirm``: 409 until the object is in storage, then
    ``processing``; confirming again while processing or ready changes nothing."""
    row = await _load(request)
    meta, store = request.config_dict[META], request.config_dict[STORE]
    if not row.has_video or row.video_key is None:
        raise RecordingsError(409, "conflict", "recording was created without has_video")
    if row.status in (RecordingStatus.PROCESSING, RecordingStatus.READY):
        return web.json_response(recording_json(row))
    info = await store.head(row.video_key)
    if info is None or info.size == 0:
        raise RecordingsError(
            409, "video_not_uploaded", "video not yet uploaded: PUT it to video_upload_url first"
        )
    updated = await meta.update_recording(
        row.recording_id,
        only_from=(RecordingStatus.UPLOADING, RecordingStatus.FAILED),
        status=RecordingStatus.PROCESSING,
        failure_reason=None,
        attempts=0,  # (a new upload, or the same after an outage: its own runs)
    )
    if updated is None:  # a concurrent confirm or delete got there first
        row = await _load(request)
        return web.json_response(recording_json(row))
    request.config_dict[RECORDINGS].processor.submit(updated.recording_id)
    return web.json_response(recording_json(updated))


async def video_put_refusal(app: web.Application, key: str) -> PutRefusal | None:
    """Why a presigned PUT of ``key`` (under ``captures/``) may not land, None when it may:
    only a recording's original video, while the recording waits for it (``uploading``, or
    ``failed`` for a new upload). A PUT after a delete left an orphan of up to 4 GiB that
    nothing lists; one after ``ready`` replaced the original under the processed video."""
    parts = key.split("/")
    row = None
    if len(parts) == 5 and parts[0] == KEY_PREFIX:
        with contextlib.suppress(ValueError):
            row = await app[META].get_recording(str(uuid.UUID(parts[2])), parts[1])
    if row is None or row.video_key != key:
        return PutRefusal(
            "no recording waits for this upload (deleted, or not a video's key)", owner_gone=True
        )
    if row.status not in (RecordingStatus.UPLOADING, RecordingStatus.FAILED):
        return PutRefusal(f"the recording's video is in already (status {row.status})")
    return None


async def delete_recording(request: web.Request) -> web.Response:
    """``DELETE /v1/recordings/{id}``: its processing stopped, every object removed, then the
    row (so a failed delete can simply be retried), then a last sweep: a presigned PUT stored
    after the first listing but before the row went is caught there, a later one takes
    itself back (:func:`video_put_refusal`)."""
    row = await _load(request)
    meta, store = request.config_dict[META], request.config_dict[STORE]
    await request.config_dict[RECORDINGS].processor.cancel(row.recording_id)
    await delete_objects(store, row)
    await meta.delete_recording(row.recording_id, row.tenant_id)
    await delete_objects(store, row)
    return web.Response(status=204)


async def delete_objects(store: ObjectStore, row: RecordingRow) -> None:
    """Remove the events, the original video and everything derived from it."""
    await store.delete(row.events_key)
    keys: AsyncIterator[Any] = store.list(object_prefix(row.tenant_id, row.recording_id))
    for info in [info async for info in keys]:
        await store.delete(info.key)


def create_subapp() -> web.Application:
    """The ``/v1/recordings`` application; mount it with ``app.add_subapp(PREFIX, ...)``."""
    sub = web.Application(middlewares=[recordings_middleware])
    sub.router.add_post("", create_recording, expect_handler=expect_checked(_may_create))
    sub.router.add_get("", list_recordings)
    sub.router.add_get("/{id}", get_recording)
    sub.router.add_delete("/{id}", delete_recording)
    sub.router.add_get("/{id}/events", stream_events)
    sub.router.add_post("/{id}/video/confirm", confirm_video)
    sub.router.add_get("/{id}/video/index.m3u8", hls_playlist)
    return sub
