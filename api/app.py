"""``create_app(settings)``: the one place where reelhouse's parts are wired together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from ingest.channels import ChannelRegistry
from ingest.errors import RpcCode, SessionError
from ingest.sessions import SessionManager
from ingest.webrtc import WhipServer
from ingest.ws import IngestHandler
from storage.errors import StorageError, StoreRefused
from storage.meta_sqlite import SqliteMetaStore
from storage.objects import ObjectInfo, ObjectStore
from storage.objects_local import LocalObjectStore
from storage.presign import UrlSigner
from storage.registry import StoreRegistry
from storage.s3 import S3ObjectStore
from storage.spool import Spool, SpoolItem

from . import cloud_recording_routes, metrics, objects_route, recordings, screen_recording, whip
from .apps import AppDirectory
from .auth import ApiKeys, load_or_create_credentials
from .bodies import bodies_middleware
from .cloud_recording import CloudRecordingService, CloudSession
from .cors import add_cors_headers
from .customers import CustomerAuth
from .errors import rpc_error, rpc_status
from .keys import (
    API_KEYS,
    APPS,
    CHANNELS,
    INGEST,
    LOOP_LAG,
    META,
    NOTIFIER,
    SESSIONS,
    SETTINGS,
    SIGNER,
    SPOOL,
    STORE,
    STORES,
    UPLOAD_LATENCY,
    WHIP,
    WRITER_TICKS,
)
from .logs import setup_logging
from .settings import Settings
from .webhooks import Notifier, WebhookTarget

log = logging.getLogger(__name__)

LOOP_LAG_SAMPLE_S = 0.05

STORAGE_CODES = {
    404: RpcCode.NOT_FOUND,
    409: RpcCode.ALREADY_EXISTS,
    503: RpcCode.UNAVAILABLE,
    507: RpcCode.RESOURCE_EXHAUSTED,
}
# paths, and folders, that take no server key: /v1/recordings checks its own (tenant-bound)
# keys and answers in its own error shape, /v1/apps/ (WHIP, cloud recording) channel tokens
# and Basic credentials of its own
PUBLIC_PATHS = frozenset(("/healthz", "/metrics", "/v1/ingest", "/publish", recordings.PREFIX))
PUBLIC_FOLDERS = ("/v1/objects/", "/v1/apps/", recordings.PREFIX + "/")


def public(path: str) -> bool:
    """``path`` is one of ``PUBLIC_PATHS`` or in one of ``PUBLIC_FOLDERS`` (a path that only
    begins like one, such as ``/healthzX`` or ``/v1/objects``, is not)."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_FOLDERS)


META_FILE = "meta.sqlite3"


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as an ``rpcStatus`` body, never a traceback."""
    try:
        return await handler(request)
    except SessionError as exc:
        retry = exc.retry_after_s
        headers = None if retry is None else {"Retry-After": str(retry)}
        raise rpc_error(exc.code, exc.message, headers) from None
    except StorageError as exc:  # the store's trouble, told apart from a bug
        log.warning("storage error on %s %s: %s", request.method, request.path, exc)
        code = STORAGE_CODES.get(exc.status, RpcCode.INTERNAL)
        raise rpc_error(code, f"storage: {type(exc).__name__}") from None
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        code = {
            404: RpcCode.NOT_FOUND,
            405: RpcCode.UNIMPLEMENTED,
            413: RpcCode.INVALID_ARGUMENT,
        }.get(exc.status, RpcCode.INVALID_ARGUMENT if exc.status < 500 else RpcCode.INTERNAL)
        kept = {k: v for k, v in exc.headers.items() if k in KEPT_ERROR_HEADERS}  # (405: Allow)
        return web.json_response(rpc_status(code, exc.reason), status=exc.status, headers=kept)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response(rpc_status(RpcCode.INTERNAL, "internal error"), status=500)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``Authorization: Bearer KEY`` on every API route but the public ones."""
    if not public(request.path):
        keys = request.app[API_KEYS]
        if not await keys.check_server_header(request.headers.get("Authorization")):
            raise rpc_error(
                RpcCode.UNAUTHENTICATED,
                "missing or invalid credential: send Authorization: Bearer <api key>",
                headers={"WWW-Authenticate": 'Bearer realm="reelhouse"'},
            )
    return await handler(request)


# headers of aiohttp's own error answers that say something the client needs
KEPT_ERROR_HEADERS = ("Accept-Encoding", "Allow", "Retry-After", "WWW-Authenticate")


async def healthz(request: web.Request) -> web.Response:
    """The metadata store answers (else 500), and at least one writer lane runs (else 503,
    ``degraded``: no session can record); the lanes and the spool's state, said either way."""
    app = request.app
    version = await app[META].schema_version()
    pool = app[SESSIONS].pool
    running, configured = pool.alive, len(pool.lanes)
    ok = running > 0
    body = {
        "status": "ok" if ok else "degraded",
        "schemaVersion": version,
        "writerLanes": {"running": running, "configured": configured},
        "spoolFull": bool(app[SPOOL].full),
    }
    return web.json_response(body, status=200 if ok else 503)


async def metrics_handler(request: web.Request) -> web.Response:
    """Prometheus text format."""
    app = request.app
    manager, spool = app[SESSIONS], app[SPOOL]
    live = [s.recorder.stats for s in manager.sessions.values()]
    text = metrics.render(
        [
            (
                "reelhouse_sessions_active",
                "gauge",
                "Open screen-recording sessions.",
                len(manager.sessions),
            ),
            (
                "reelhouse_sessions_started_total",
                "counter",
                "Sessions started.",
                manager.stats.started,
            ),
            ("reelhouse_sessions_ended_total", "counter", "Sessions ended.", manager.stats.ended),
            (
                "reelhouse_ws_connections",
                "gauge",
                "Open ingest WebSockets.",
                len(app[INGEST].connections),
            ),
            (
                "reelhouse_ws_refused_total",
                "counter",
                "Ingest WebSockets refused: the server held [ingest] max_connections.",
                app[INGEST].refused,
            ),
            (
                "reelhouse_frames_in_total",
                "counter",
                "Media frames received.",
                manager.stats.frames_in + sum(s.frames_in for s in live),
            ),
            (
                "reelhouse_bytes_in_total",
                "counter",
                "Media payload bytes received.",
                manager.stats.bytes_in + sum(s.bytes_in for s in live),
            ),
            (
                "reelhouse_segments_written_total",
                "counter",
                "HLS segments written.",
                manager.stats.segments + sum(s.segments for s in live),
            ),
            ("reelhouse_upload_queue_depth", "gauge", "Files waiting in the spool.", spool.depth),
            (
                "reelhouse_writer_lanes_running",
                "gauge",
                "Writer lane processes running (fewer than configured: one is restarting after"
                " a crash, or crashed again at once and was left down).",
                manager.pool.alive,
            ),
            (
                "reelhouse_writer_lane_restarts_total",
                "counter",
                "Writer lanes restarted after a crash.",
                manager.pool.restarts,
            ),
            ("reelhouse_spool_bytes", "gauge", "Bytes held in the spool.", spool.bytes),
            (
                "reelhouse_uploads_total",
                "counter",
                "Files confirmed by the object store.",
                spool.uploaded_total,
            ),
            (
                "reelhouse_upload_bytes_total",
                "counter",
                "Bytes confirmed by the object store.",
                spool.uploaded_bytes_total,
            ),
            (
                "reelhouse_uploads_superseded_total",
                "counter",
                "Queued files dropped unsent: a later file of their session replaced them.",
                spool.superseded_total,
            ),
            (
                "reelhouse_upload_failures_total",
                "counter",
                "Failed upload attempts.",
                spool.upload_failures_total,
            ),
            (
                "reelhouse_upload_oldest_pending_seconds",
                "gauge",
                "Age of the oldest file waiting for its upload (0 when none).",
                round(spool.oldest_pending_s(), 3),
            ),
            ("reelhouse_spool_full", "gauge", "1 while the spool refuses new files.", spool.full),
            ("reelhouse_whip_sessions", "gauge", "Open WHIP sessions.", len(app[WHIP].sessions)),
            (
                "reelhouse_whip_video_frames_total",
                "counter",
                "Video frames received over WebRTC.",
                app[WHIP].frames_in.get("video", 0),
            ),
            (
                "reelhouse_whip_audio_frames_total",
                "counter",
                "Audio frames received over WebRTC.",
                app[WHIP].frames_in.get("audio", 0),
            ),
        ]
    )
    text += metrics.render(app[NOTIFIER].samples())
    text += app[UPLOAD_LATENCY].render()
    text += app[WRITER_TICKS].render()
    text += app[LOOP_LAG].render()
    resp = web.Response(text=text)
    resp.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
    return resp


async def _default_store(settings: Settings, data: Path, signer: UrlSigner) -> ObjectStore:
    """The server-wide store; a wrong bucket or key stops the start, an outage does not."""
    if settings.storage.backend == "local":
        return LocalObjectStore(data / "objects", signer)
    store = S3ObjectStore(settings.storage.s3_config())
    if settings.storage.check_on_start:
        try:
            await store.check()
        except StoreRefused:
            await store.aclose()
            raise
        except StorageError as exc:  # files wait in the spool until it answers
            log.error("default object store not reachable at start: %s", exc)
    log.info("default object store: %s", store.config.describe())
    return store


async def _services(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    data = settings.data_dir
    creds, created = await asyncio.to_thread(load_or_create_credentials, data)
    api_key = settings.auth.api_key or creds["api_key"]
    if created and not settings.auth.api_key:
        log.info("created development credentials in %s", data / "credentials.json")
    # relative URLs: the API puts the public origin in front (the bound port may be 0 here)
    signer = UrlSigner(creds["signing_secret"].encode(), "")
    store = await _default_store(settings, data, signer)  # first: it may refuse to start
    meta = SqliteMetaStore(data / META_FILE)
    await meta.open()
    stores = StoreRegistry(
        data / "stores",
        store,
        settings.storage.tuning(),
        private_endpoints=settings.storage.private_endpoints,
    )
    await stores.start()
    latency = metrics.Histogram(
        "reelhouse_upload_latency_seconds",
        "From a file entering the spool to the object store confirming it.",
        metrics.LATENCY_BUCKETS_S,
    )

    async def uploaded(item: SpoolItem, info: ObjectInfo, latency_s: float) -> None:
        latency.observe(latency_s, metrics.file_kind(item.key))
        await meta.mark_uploaded(item.key, datetime.now(UTC))

    spool = Spool(
        data / "spool",
        stores.resolve,
        max_bytes=settings.spool.max_bytes,
        workers=settings.spool.upload_workers,
        retry_base_s=settings.spool.retry_base_s,
        retry_max_s=settings.spool.retry_max_s,
        on_uploaded=uploaded,
    )
    await spool.start()
    manager = SessionManager(
        meta=meta,
        spool=spool,
        live_dir=data / "live",
        recorder=settings.recorder,
        ingest=settings.ingest,
        wal_dir=data / "wal",
        log_setup=(setup_logging, (settings.log_level, settings.log_json)),
    )
    keys = ApiKeys(api_key, meta)
    app[META], app[STORE], app[SPOOL], app[SIGNER] = meta, store, spool, signer
    app[API_KEYS], app[SESSIONS] = keys, manager
    app[STORES], app[UPLOAD_LATENCY] = stores, latency

    ticks = metrics.Histogram(
        "reelhouse_writer_tick_seconds",
        "Writer ticks by phase: the WAL fsync (sync), the worker's part with it (write), the"
        " whole tick (tick), and from a batch's oldest frame arriving to its ack (ack).",
        metrics.LATENCY_BUCKETS_S,
        label="phase",
    )
    manager.pool.observe = ticks.observe
    lag = metrics.Histogram(
        "reelhouse_event_loop_lag_seconds",
        "How late the event loop wakes a timer (sampled every 50 ms): time it could not serve.",
        metrics.LATENCY_BUCKETS_S,
        label="loop",
    )
    app[WRITER_TICKS], app[LOOP_LAG] = ticks, lag
    lag_task = asyncio.create_task(_watch_loop_lag(lag), name="loop-lag")
    await manager.start()
    channels = ChannelRegistry()
    apps = AppDirectory(meta)
    app[CHANNELS], app[APPS] = channels, apps
    app[INGEST] = IngestHandler(manager, settings.ingest, keys.check_server, channels, apps.admit)
    app[WHIP] = WhipServer(channels, settings.webrtc, settings.http.host)
    webhook_http = aiohttp.ClientSession()
    notifier = Notifier(webhook_http, store=meta)
    await notifier.start()  # notices a restart interrupted go out again
    app[NOTIFIER] = notifier

    async def notify(session: CloudSession, event_type: int, details: dict[str, Any]) -> None:
        app_row = await apps.get(session.resource.appid)
        if app_row is None or not app_row.webhook_url:
            return
        target = WebhookTarget(app_row.webhook_url, app_row.webhook_secret)
        res = session.resource
        await notifier.notify(
            target, event_type, cname=res.cname, uid=res.uid, sid=session.sid, details=details
        )

    cloud = CloudRecordingService(
        channels, stores, spool, data / "cloud", notify=notify, store=meta
    )
    cloud.segment_s = settings.recorder.segment_target_s  # (each session keeps its own)
    await cloud.open()  # recordings a restart interrupted go on
    app[cloud_recording_routes.CLOUD] = cloud
    app[cloud_recording_routes.CUSTOMERS] = CustomerAuth(meta)
    app[cloud_recording_routes.RATE] = cloud_recording_routes.RateLimit()
    processor = recordings.VideoProcessor(meta, store, data / "recordings-work")
    app[recordings.RECORDINGS] = recordings.RecordingService(
        data / "tmp", processor, link_expiry_s=settings.storage.presign_expiry_s
    )
    guards: dict[str, objects_route.PutGuard] = {
        f"{recordings.KEY_PREFIX}/": recordings.video_put_refusal
    }
    app[objects_route.PUT_GUARDS] = guards
    await asyncio.to_thread(recordings.prepare_tmp, data / "tmp")
    await processor.start()
    try:
        yield
    finally:
        lag_task.cancel()
        await processor.aclose()
        # before the spool: suspended recordings hand it their last files (they go on after
        # the restart)
        await cloud.aclose()
        await notifier.aclose()
        await webhook_http.close()
        await app[WHIP].aclose()
        await app[INGEST].aclose()
        await manager.aclose()
        await spool.aclose()
        await stores.aclose()
        await store.aclose()
        await meta.aclose()


async def _watch_loop_lag(lag: metrics.Histogram) -> None:
    loop = asyncio.get_running_loop()
    while True:
        began = loop.time()
        await asyncio.sleep(LOOP_LAG_SAMPLE_S)
        lag.observe(max(0.0, loop.time() - began - LOOP_LAG_SAMPLE_S), "main")


async def _on_shutdown(app: web.Application) -> None:
    # before handlers are cancelled: close sockets with GOING_AWAY, then make open segments safe
    if cloud_recording_routes.CLOUD in app:  # publishers leaving now is no idle channel
        app[cloud_recording_routes.CLOUD].begin_shutdown()
    if INGEST in app:
        await app[INGEST].aclose()
        await app[SESSIONS].aclose()


async def _ingest(request: web.Request) -> web.StreamResponse:
    return await request.app[INGEST](request)


def create_app(settings: Settings) -> web.Application:
    """The aiohttp application with every service opened in ``cleanup_ctx``."""
    app = web.Application(
        middlewares=[
            bodies_middleware,
            errors_middleware,
            cloud_recording_routes.cloud_middleware,
            auth_middleware,
        ],
        client_max_size=1024**2,
    )
    app[SETTINGS] = settings
    app.on_response_prepare.append(add_cors_headers)
    app.cleanup_ctx.append(_services)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/v1/ingest", _ingest)
    screen_recording.add_routes(app)
    objects_route.add_routes(app)
    whip.add_routes(app)
    cloud_recording_routes.add_routes(app)
    app.add_subapp(recordings.PREFIX, recordings.create_subapp())
    return app
