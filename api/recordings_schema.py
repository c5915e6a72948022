"""The recordings API's wire format (seed 002): its error body, the checks on a create body's
fields and query parameters, and the recording resource as JSON."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from storage.recordings import RecordingRow, RecordingStatus

from .recordings_events import MAX_TIME_MS, BodyError, ParsedUpload

DEFAULT_LIMIT = 25
MAX_LIMIT = 100
MAX_NAME_CHARS = 1000
MAX_NAVIGATIONS = 10_000
MAX_COUNT = 2**63 - 1  # the metadata store's integers


class RecordingsError(Exception):
    """An answer of the recordings API other than success: status, code, message, field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        """The error as the API sends it: ``{"error": {"code", "message"[, "field"]}}``."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return web.json_response({"error": body}, status=self.status, headers=headers)


def invalid(field: str | None, message: str) -> RecordingsError:
    """A 400 ``validation_error``."""
    return RecordingsError(400, "validation_error", message, field)


def not_found() -> RecordingsError:
    """The one 404 for a missing id and for another tenant's id alike (ids do not leak)."""
    return RecordingsError(404, "not_found", "recording not found")


def from_body_error(exc: BodyError) -> RecordingsError:
    """A parse failure of the create body as a 400."""
    return invalid(exc.field, exc.message)


def parse_uuid(text: str | None, field: str) -> str | None:
    """The canonical form of a UUID parameter, ``None`` when absent; 400 when malformed."""
    if text is None or text == "":
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise invalid(field, f"{field} must be a UUID") from None


def _time(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise invalid(field, f"{field} must be an ISO 8601 timestamp string")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise invalid(field, f"{field} is not an ISO 8601 timestamp: {value[:64]!r}") from None
    # a time without an offset is taken as UTC, what browsers' toISOString() sends anyway
    try:
        return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:  # (year 1 with a positive offset: before the first representable)
        raise invalid(field, f"{field} is out of range: {value[:64]!r}") from None


def _count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise invalid(field, f"{field} must be an integer from 0 to {MAX_COUNT}")
    return value


def _flag(value: Any, field: str) -> bool:
    """An optional boolean: absent or null is false."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(field, f"{field} must be a boolean")
    return value


def _navigations(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise invalid("navigations", "navigations must be an array")
    if len(value) > MAX_NAVIGATIONS:
        raise invalid("navigations", f"navigations has more than {MAX_NAVIGATIONS} entries")
    for i, nav in enumerate(value):
        where = f"navigations[{i}]"
        if not isinstance(nav, dict):
            raise invalid(where, f"{where} must be an object with url and timestamp_ms")
        if not isinstance(nav.get("url"), str):
            raise invalid(f"{where}.url", f"{where}.url must be a string")
        ts = nav.get("timestamp_ms")
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not abs(ts) <= MAX_TIME_MS:
            # (JSON's 1e400 reads as infinity, which every later GET would write as Infinity:
            # no JSON parser in a browser reads that, for any user of the tenant)
            raise invalid(f"{where}.timestamp_ms", f"{where}.timestamp_ms must be a time in ms")
    return value


def create_fields(parsed: ParsedUpload) -> dict[str, Any]:
    """The checked fields of a create body as ``RecordingRow`` keyword arguments (less the
    ids, status and keys); unknown fields are ignored so newer extensions still upload."""
    f = parsed.fields
    if not parsed.has_events:
        raise invalid("events", "events is required: an array of rrweb events")
    if f.get("started_at") is None:
        raise invalid("started_at", "started_at is required (ISO 8601)")
    out: dict[str, Any] = {"started_at": _time(f["started_at"], "started_at")}
    if f.get("ended_at") is not None:
        out["ended_at"] = _time(f["ended_at"], "ended_at")
        if out["ended_at"] < out["started_at"]:
            raise invalid("ended_at", "ended_at is before started_at")
    if f.get("name") is not None:
        if not isinstance(f["name"], str) or len(f["name"]) > MAX_NAME_CHARS:
            raise invalid("name", f"name must be a string of at most {MAX_NAME_CHARS} characters")
        out["name"] = f["name"]
    out["project_id"] = (
        None if f.get("project_id") is None else _uuid_field(f["project_id"], "project_id")
    )
    out["has_video"] = _flag(f.get("has_video"), "has_video")
    out["has_audio"] = _flag(f.get("has_audio"), "has_audio")
    out["navigations"] = _navigations(f.get("navigations") or [])
    duration, count = f.get("duration_ms"), f.get("event_count")
    out["duration_ms"] = parsed.span_ms if duration is None else _count(duration, "duration_ms")
    out["event_count"] = parsed.event_count if count is None else _count(count, "event_count")
    return out


def _uuid_field(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise invalid(field, f"{field} must be a UUID string")
    result = parse_uuid(value, field)
    assert result is not None  # a non-empty string parsed
    return result


def list_query(query: Any) -> tuple[int, str | None, str | None, str | None]:
    """``limit``, ``cursor``, ``project_id`` and ``status`` of a list request, checked."""
    text = query.get("limit")
    limit = DEFAULT_LIMIT
    if text is not None:
        try:
            limit = int(text)
        except ValueError:
            raise invalid("limit", "limit must be an integer") from None
        if limit < 1:
            raise invalid("limit", f"limit must be between 1 and {MAX_LIMIT}")
        limit = min(limit, MAX_LIMIT)  # the seed's "max 100": a cap, not a refusal
    status = query.get("status") or None
    if status is not None and status not in set(RecordingStatus):
        raise invalid("status", f"status must be one of {', '.join(RecordingStatus)}")
    return (
        limit,
        parse_uuid(query.get("cursor"), "cursor"),
        parse_uuid(query.get("project_id"), "project_id"),
        status,
    )


def ts(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def recording_json(row: RecordingRow) -> dict[str, Any]:
    """The recording resource: the seed's fields in its order, then ``failure_reason``."""
    return {
        "id": row.recording_id,
        "tenant_id": row.tenant_id,
        "project_id": row.project_id,
        "user_id": row.user_id,
        "name": row.name,
        "status": row.status,
        "started_at": ts(row.started_at),
        "ended_at": ts(row.ended_at),
        "duration_ms": row.duration_ms,
        "event_count": row.event_count,
        "has_video": row.has_video,
        "has_audio": row.has_audio,
        "navigations": row.navigations,
        "journey_id": row.journey_id,
        "created_at": ts(row.created_at),
        "updated_at": ts(row.updated_at),
        "failure_reason": row.failure_reason,
    }
