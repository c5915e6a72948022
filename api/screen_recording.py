"""Seed 000: ``ProcessScreenRecordingSessionEvent``, and reading a session back."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from aiohttp import web

from ingest.errors import InvalidEvent, RpcCode
from ingest.events import SESSION_ID_RE, parse_event
from storage.meta import FileRow, SessionEventRow, SessionRow

from .bodies import read_limited
from .errors import rpc_error
from .keys import SESSIONS, SETTINGS, SIGNER, STORE
from .objects_route import absolute_url

MAX_BODY_BYTES = 64 * 1024
PROFILE_ID_RE = r"[^/:]+"


def _ts(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _name(row: SessionRow) -> str:
    profile = f"customers/{row.customer_id}/profiles/{row.profile_id}"
    return f"{profile}/screenRecordingSessions/{row.session_id}"


def session_json(
    row: SessionRow, events: list[SessionEventRow] | None = None, files: list[FileRow] | None = None
) -> dict[str, Any]:
    """The session resource in the API's JSON (camelCase, RFC 3339 times)."""
    out: dict[str, Any] = {
        "name": _name(row),
        "sessionId": row.session_id,
        "state": row.state,
        "platformCallId": row.platform_call_id,
        "agentPlatformId": row.agent_platform_id,
        "userId": row.user_id,
        "createTime": _ts(row.created_at),
        "updateTime": _ts(row.updated_at),
        "endTime": _ts(row.ended_at),
        "recordedDuration": f"{row.recorded_ms / 1000:.3f}s",
    }
    if events is not None:
        out["events"] = [
            {
                "eventType": ev.event_type,
                "createTime": _ts(ev.created_at),
                "acked": ev.acked_at is not None,
                "ackTime": _ts(ev.acked_at),
            }
            for ev in events
        ]
    if files is not None:
        out["files"] = [
            {
                "kind": f.kind,
                "key": f.key,
                "sizeBytes": str(f.size),
                "duration": f"{f.duration_ms / 1000:.3f}s",
                "uploaded": f.uploaded_at is not None,
                **(
                    {
                        "sequence": f.seq,
                        "discontinuity": f.discontinuity,
                        "programDateTime": _ts(f.program_date_time),
                    }
                    if f.kind == "segment"
                    else {}
                ),
            }
            for f in files
        ]
    return out


async def _json_body(request: web.Request) -> Any:
    raw = await read_limited(request, MAX_BODY_BYTES)
    if raw is None:
        raise rpc_error(
            RpcCode.INVALID_ARGUMENT, f"request body larger than {MAX_BODY_BYTES} bytes"
        )
    try:
        return json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise InvalidEvent("request body is not valid JSON") from None
    except RecursionError:
        raise InvalidEvent("request body is nested too deeply") from None


def _profile(request: web.Request) -> tuple[str, str]:
    """The path's customer and profile ids: they name the session's objects
    (``recordings/{customer}/{profile}/…``), so they follow the sessionId's rule."""
    ids = request.match_info["customer_id"], request.match_info["profile_id"]
    for name, value in zip(("customerId", "profileId"), ids, strict=True):
        if not SESSION_ID_RE.match(value):
            raise InvalidEvent(
                f"{name} may hold only letters, digits, '.', '_', '~' and '-', must start with "
                "a letter or digit and be at most 128 characters"
            )
    return ids


def add_routes(app: web.Application) -> None:
    """Register the screen recorder service's routes."""
    base = f"/v1/customers/{{customer_id}}/profiles/{{profile_id:{PROFILE_ID_RE}}}"
    app.router.add_post(base + ":processScreenRecordingSessionEvent", process_event)
    app.router.add_get(base + "/screenRecordingSessions/{session_id}", get_session)


async def process_event(request: web.Request) -> web.Response:
    """``POST …:processScreenRecordingSessionEvent``."""
    customer_id, profile_id = _profile(request)
    event = parse_event(await _json_body(request))
    event, row = await request.app[SESSIONS].process_event(customer_id, profile_id, event)
    return web.json_response({"sessionEvent": event.to_json(), "session": session_json(row)})


async def get_session(request: web.Request) -> web.Response:
    """``GET …/screenRecordingSessions/{session_id}``: state, timestamps, events, files."""
    row, events, files = await request.app[SESSIONS].get(
        *_profile(request), request.match_info["session_id"]
    )
    body = session_json(row, events, files)
    store, signer = request.app[STORE], request.app[SIGNER]
    expires_s = request.app[SETTINGS].storage.presign_expiry_s
    for entry in body["files"]:
        if not entry["uploaded"]:
            continue
        # a link that works without credentials (``[storage] presign_expiry_s``); a playlist's
        # is served by this server whatever the store, with its segments signed in it, so
        # that it plays
        if entry["kind"] == "playlist":
            url: str | None = signer.sign(entry["key"], "GET", expires_s)
        else:
            url = await store.presigned_url(entry["key"], "GET", expires_s)
        if url is not None:
            entry["url"] = absolute_url(request, url)
    return web.json_response(body)
