"""HTTP of the cloud recording API: ``/v1/apps/{appid}/cloud_recording/...``.

Basic Auth with a customer id and secret; a per-app rate limit; every refusal as that API
answers it, ``{"code": N, "reason": "..."}`` with HTTP 400 (401, 404, 429 where it says so).
Request bodies are parsed by ``cloud_recording_schema``; the work is done by
``cloud_recording.CloudRecordingService``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ingest.channel_mix import UidSelector
from ingest.tokens import Role, TokenError, verify
from mixer.mix_config import FileType, fetch_style
from storage.errors import StorageError
from storage.meta import AppRow

from .bodies import read_limited
from .cloud_recording import CloudFailure, CloudRecordingService, CloudSession, member_outputs
from .cloud_recording_schema import (
    CloudError,
    StartConfig,
    check_start_matches_acquire,
    parse_acquire,
    parse_json,
    parse_start,
    parse_stop,
    parse_update,
    parse_update_layout,
)
from .cloud_recording_schema_start import UID_GROUP_MAX
from .customers import CustomerAuth
from .keys import APPS

log = logging.getLogger(__name__)

PATH_WORD = "cloud_recording"
BASE = "/v1/apps/{appid}/" + PATH_WORD
RATE_PER_S = 10.0  # requests per second per app, as that API allows
RATE_BURST = 20.0
MAX_BODY_BYTES = 1024 * 1024

CLOUD = web.AppKey("cloud_recording", CloudRecordingService)
CUSTOMERS = web.AppKey("customers", CustomerAuth)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(code: int, reason: str, status: int = 400) -> web.Response:
    """The API's error body."""
    return web.json_response({"code": code, "reason": reason}, status=status)


class RateLimit:
    """A token bucket per app: ``RATE_PER_S`` sustained, ``RATE_BURST`` at once."""

    def __init__(self, rate: float = RATE_PER_S, burst: float = RATE_BURST) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, now: float | None = None) -> bool:
        """Take one token for ``key``; false when none is left."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > 10_000:  # forget idle apps rather than grow without bound
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
        return True


RATE = web.AppKey("cloud_rate", RateLimit)


def is_cloud_path(path: str) -> bool:
    """``/v1/apps/{appid}/cloud_recording/...``: that API's, and no other API's path that
    happens to hold the words (a screen recording customer named ``cloud_recording``)."""
    parts = path.split("/", 5)
    return len(parts) > 4 and parts[1] == "v1" and parts[2] == "apps" and parts[4] == PATH_WORD


@web.middleware
async def cloud_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth, rate limit and the API's error shape for every cloud recording path."""
    if not is_cloud_path(request.path):
        return await handler(request)
    if await request.app[CUSTOMERS].check(request.headers.get("Authorization")) is None:
        resp = error(401, "invalid authorization header: Basic customer id and secret", 401)
        resp.headers["WWW-Authenticate"] = 'Basic realm="reelhouse cloud recording"'
        return resp
    if not request.app[RATE].allow(request.match_info.get("appid", "")):
        resp = error(429, "too many requests for this app (10 per second)", 429)
        resp.headers["Retry-After"] = "1"  # (its bucket refills 10 a second)
        return resp
    try:
        return await handler(request)
    except (CloudFailure, CloudError) as exc:
        return error(int(exc.code), exc.reason, exc.http_status)
    except StorageError as exc:  # the user's bucket, checked at start and at a renewal
        return error(2, f"storageConfig: {exc}")
    except web.HTTPException as exc:
        if exc.status == 404:
            return error(404, "no such cloud recording path", 404)
        if exc.status == 405:
            resp = error(405, f"{request.method} is not allowed here", 405)
            resp.headers["Allow"] = exc.headers.get("Allow", "")  # (RFC 9110: a 405 says)
            return resp
        if exc.status in (400, 415):  # (api.bodies: a body that cannot be read, or its coding)
            return error(8, exc.reason)
        if exc.status == 413:
            return error(8, f"the body is larger than {MAX_BODY_BYTES} bytes")
        if exc.status == 408:  # (api.bodies: the body stopped coming)
            return error(408, exc.reason, 408)
        raise
    except Exception:  # a bug of ours: in this API's shape too (details in the log)
        log.exception("cloud recording %s %s failed", request.method, request.path)
        return error(500, "internal error", 500)


async def read_json(request: web.Request) -> Any:
    """The body as JSON, or the API's code 8."""
    raw = await read_limited(request, MAX_BODY_BYTES)
    if raw is None:
        raise CloudFailure(8, f"the body is larger than {MAX_BODY_BYTES} bytes")
    return parse_json(raw)


def query_body(session: CloudSession) -> dict[str, Any]:
    """``serverResponse`` of query (and the base of stop's)."""
    mode, files = session.file_list()
    return {
        "cname": session.resource.cname,
        "uid": session.resource.uid,
        "resourceId": session.resource.resource_id,
        "sid": session.sid,
        "serverResponse": {
            "status": session.status,
            "fileListMode": mode,
            "fileList": files,
            "sliceStartTime": session.started_ms,
        },
    }


def selector(flt: Any) -> UidSelector:
    """The schema's uid filter as the recorders' selector."""
    return UidSelector(flt.only, flt.exclude)


def start_options(config: StartConfig) -> dict[str, Any]:
    """What the service records, from a start's parsed ``clientRequest``."""
    mix = config.mix
    recording = config.recording
    snapshot_s = float(config.snapshot.capture_interval_s) if config.snapshot else None
    group = recording.subscribe_uid_group
    return {
        "mix": mix,
        "file_types": mix.file_types if mix is not None else frozenset({FileType.HLS}),
        "audio_uids": selector(recording.audio_filter),
        "video_uids": selector(recording.video_filter),
        "max_idle_s": float(recording.max_idle_time_s),
        "snapshot_every_s": snapshot_s,
        "outputs": member_outputs(
            str(recording.stream_mode),
            int(recording.stream_types),
            record=config.recording_file is not None,  # None: snapshots only
            snapshot_every_s=snapshot_s,
        ),
        "max_uids": UID_GROUP_MAX[group] if group is not None and mix is None else None,
    }


async def acquire(request: web.Request) -> web.Response:
    """``POST acquire``."""

    body = await read_json(request)
    req = parse_acquire(body)
    await _known_app(request)  # (a resource, and the body it keeps, for a real app only)
    res = await request.app[CLOUD].acquire(request.match_info["appid"], req.cname, req.uid, body)
    return web.json_response({"cname": req.cname, "uid": req.uid, "resourceId": res.resource_id})


async def _known_app(request: web.Request) -> AppRow:
    """The path's app; code 2 when this server has no such app."""
    app_row = await request.app[APPS].get(request.match_info["appid"])
    if app_row is None:
        raise CloudFailure(2, f"appid {request.match_info['appid']} is not an app of this server")
    return app_row


async def _check_token(request: web.Request, cname: str, uid: str, token: str | None) -> None:
    """The recorder joins the channel as ``uid``: an app with tokens needs a valid one."""
    app_row = await _known_app(request)
    if not app_row.token_required:
        return
    if not token:
        raise CloudFailure(110, "clientRequest.token: the app needs a token for the recorder uid")
    try:
        verify(
            token, app_row.certificate, appid=app_row.appid, cname=cname, uid=uid,
            role=Role.SUBSCRIBER,
        )  # fmt: skip
    except TokenError as exc:
        code = 109 if "expired" in str(exc) else 110
        raise CloudFailure(code, f"clientRequest.token: {exc}") from None


async def start(request: web.Request) -> web.Response:
    """``POST resourceid/{rid}/mode/{mode}/start``."""

    appid, rid, mode = (request.match_info[k] for k in ("appid", "resourceid", "mode"))
    service = request.app[CLOUD]
    res = service.resource(appid, rid)
    body = await read_json(request)
    req = parse_start(body, mode)
    if res.request is not None:  # what acquire was sent (checked when it was)
        check_start_matches_acquire(parse_acquire(res.request), req)
    await _check_token(request, req.cname, req.uid, req.config.token)
    config = req.config
    session = await service.start(
        appid, rid, str(req.mode), req.cname, req.uid, config.storage,
        **start_options(config), request=body["clientRequest"], config=config,
    )  # fmt: skip
    return web.json_response(
        {"cname": req.cname, "uid": req.uid, "resourceId": rid, "sid": session.sid}
    )


def _session(request: web.Request) -> CloudSession:
    m = request.match_info
    return request.app[CLOUD].session(m["appid"], m["resourceid"], m["sid"], m["mode"])


async def query(request: web.Request) -> web.Response:
    """``GET .../query``."""
    return web.json_response(query_body(_session(request)))


async def update(request: web.Request) -> web.Response:
    """``POST .../update``: subscriptions (and a renewed storageConfig) from now on."""

    session = _session(request)
    req = parse_update(await read_json(request), session.mode)
    request.app[CLOUD].check_running(session)
    if session.config is None:  # started without its request (not through this API)
        raise CloudFailure(2, "update: the start request of this session was not kept")
    config = req.apply_to(session.config)  # refused (code 2) before anything changes
    if req.storage is not None:  # renewed credentials, checked first: a refusal changes nothing
        await request.app[CLOUD].renew_storage(session, req.storage)
        config = req.apply_to(session.config)  # onto an update that ended meanwhile
    session.config = config
    await request.app[CLOUD].update_subscriptions(
        session,
        selector(config.recording.audio_filter),
        selector(config.recording.video_filter),
    )
    return web.json_response(
        {"cname": req.cname, "uid": req.uid, "resourceId": session.resource.resource_id,
         "sid": session.sid}
    )  # fmt: skip


async def update_layout(request: web.Request) -> web.Response:
    """``POST .../updateLayout`` (mix): the whole layout replaced."""

    session = _session(request)
    body = await read_json(request)
    req = parse_update_layout(body)
    mix = getattr(session.config, "mix", None)
    style = await fetch_style(
        req.background_color,
        req.background_image,
        req.default_user_background_image,
        req.user_backgrounds,
        paint=mix is None or mix.video,
    )
    await request.app[CLOUD].update_layout(session, req.layout, style, body["clientRequest"])
    return web.json_response(
        {"cname": req.cname, "uid": req.uid, "resourceId": session.resource.resource_id,
         "sid": session.sid}
    )  # fmt: skip


async def stop(request: web.Request) -> web.Response:
    """``POST .../stop``: files finished and (unless ``async_stop``) uploaded."""

    session = _session(request)
    req = parse_stop(await read_json(request))
    status = await request.app[CLOUD].stop(session, async_stop=req.async_stop)
    body = query_body(session)
    body["serverResponse"]["uploadingStatus"] = status
    return web.json_response(body)


def add_routes(app: web.Application) -> None:
    """Register the cloud recording API."""
    session = BASE + "/resourceid/{resourceid}/sid/{sid}/mode/{mode}"
    app.router.add_post(BASE + "/acquire", acquire)
    app.router.add_post(BASE + "/resourceid/{resourceid}/mode/{mode}/start", start)
    app.router.add_get(session + "/query", query)
    app.router.add_post(session + "/update", update)
    app.router.add_post(session + "/updateLayout", update_layout)
    app.router.add_post(session + "/stop", stop)
