"""Screen-recording session events (seed 000): their types, the request body, and the
state machine that says which event is allowed in which state."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .errors import InvalidEvent, TransitionNotAllowed

MAX_FIELD_CHARS = 128
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$")  # safe in paths and keys


class EventType(StrEnum):
    """``ScreenRecordingSessionEventEventType``."""

    UNSPECIFIED = "EVENT_TYPE_UNSPECIFIED"
    START = "EVENT_TYPE_START"
    END = "EVENT_TYPE_END"
    RECONNECT = "EVENT_TYPE_RECONNECT"
    PAUSE = "EVENT_TYPE_PAUSE"
    RESUME = "EVENT_TYPE_RESUME"


# The events that name their session by ``sessionId`` only ("Session id, which is used by
# EVENT_TYPE_END, EVENT_TYPE_RECONNECT events"); PAUSE and RESUME may name it by the platform's
# ids instead (the one open session of the profile that has them), START makes it.
BY_SESSION_ID = frozenset({EventType.END, EventType.RECONNECT})


class SessionState(StrEnum):
    """Where a session is in its life."""

    RECORDING = "RECORDING"
    PAUSED = "PAUSED"
    ENDED = "ENDED"


OPEN_STATES = (SessionState.RECORDING.value, SessionState.PAUSED.value)

# (state before, event) → state after; anything missing is not allowed.
TRANSITIONS: dict[tuple[SessionState | None, EventType], SessionState] = {
    (None, EventType.START): SessionState.RECORDING,
    (SessionState.RECORDING, EventType.PAUSE): SessionState.PAUSED,
    (SessionState.PAUSED, EventType.RESUME): SessionState.RECORDING,
    (SessionState.RECORDING, EventType.END): SessionState.ENDED,
    (SessionState.PAUSED, EventType.END): SessionState.ENDED,
    (SessionState.RECORDING, EventType.RECONNECT): SessionState.RECORDING,
    (SessionState.PAUSED, EventType.RECONNECT): SessionState.PAUSED,
}

# the control action pushed to the recording app for each event
CONTROL_ACTION = {
    EventType.START: "start",
    EventType.PAUSE: "pause",
    EventType.RESUME: "resume",
    EventType.END: "stop",
}


def next_state(state: SessionState | None, event: EventType) -> SessionState:
    """The state after ``event``; raises :class:`TransitionNotAllowed` when it is not allowed."""
    after = TRANSITIONS.get((state, event))
    if after is None:
        where = f"a session in state {state.value}" if state else "a new session"
        raise TransitionNotAllowed(f"{event.value} is not allowed for {where}")
    return after


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """``screenrecordingScreenRecordingSessionEvent``, validated."""

    event_type: EventType
    session_id: str = ""
    platform_call_id: str = ""
    agent_platform_id: str = ""
    user_id: str = ""

    def to_json(self) -> dict[str, str]:
        """The event in the API's JSON field names (empty fields left out, as proto3 JSON does)."""
        out = {
            "eventType": self.event_type.value,
            "sessionId": self.session_id,
            "platformCallId": self.platform_call_id,
            "agentPlatformId": self.agent_platform_id,
            "userId": self.user_id,
        }
        return {k: v for k, v in out.items() if v}


_FIELDS = {
    "sessionId": "session_id",
    "platformCallId": "platform_call_id",
    "agentPlatformId": "agent_platform_id",
    "userId": "user_id",
}
# proto3 JSON parsers accept the original snake_case names too
_ALIASES = {
    "session_id": "sessionId",
    "platform_call_id": "platformCallId",
    "agent_platform_id": "agentPlatformId",
    "user_id": "userId",
    "event_type": "eventType",
}


def parse_event(body: Any) -> SessionEvent:
    """Validate a ``ProcessScreenRecordingSessionEvent`` body; raises :class:`InvalidEvent`."""
    if not isinstance(body, dict):
        raise InvalidEvent("request body must be a JSON object")
    unknown = set(body) - {"sessionEvent", "session_event"}
    if unknown:
        raise InvalidEvent(f"unknown field {sorted(unknown)[0]!r} in request")
    raw = body.get("sessionEvent", body.get("session_event"))
    if raw is None:
        raise InvalidEvent("sessionEvent is required")
    if not isinstance(raw, dict):
        raise InvalidEvent("sessionEvent must be an object")
    raw = {_ALIASES.get(k, k): v for k, v in raw.items()}
    unknown = set(raw) - {"eventType", *_FIELDS}
    if unknown:
        raise InvalidEvent(f"unknown field {sorted(unknown)[0]!r} in sessionEvent")
    kind = raw.get("eventType", EventType.UNSPECIFIED.value)
    if isinstance(kind, int) and not isinstance(kind, bool) and 0 <= kind < len(EventType):
        kind = list(EventType)[kind].value  # proto3 JSON accepts the enum number
    if not isinstance(kind, str) or kind not in EventType._value2member_map_:
        allowed = ", ".join(e.value for e in EventType if e is not EventType.UNSPECIFIED)
        raise InvalidEvent(f"sessionEvent.eventType must be one of {allowed}")
    event_type = EventType(kind)
    if event_type is EventType.UNSPECIFIED:
        raise InvalidEvent("sessionEvent.eventType must be set (EVENT_TYPE_UNSPECIFIED given)")
    values: dict[str, str] = {}
    for name, attr in _FIELDS.items():
        value = raw.get(name, "")
        if not isinstance(value, str):
            raise InvalidEvent(f"sessionEvent.{name} must be a string")
        if len(value) > MAX_FIELD_CHARS:
            raise InvalidEvent(f"sessionEvent.{name} must be at most {MAX_FIELD_CHARS} characters")
        values[attr] = value
    sid = values["session_id"]
    if sid and not SESSION_ID_RE.match(sid):
        raise InvalidEvent(
            "sessionEvent.sessionId may hold only letters, digits, '.', '_', '~' and '-' "
            "and must start with a letter or digit"
        )
    if event_type in BY_SESSION_ID and not sid:
        raise InvalidEvent(f"sessionEvent.sessionId is required for {event_type.value}")
    if event_type in (EventType.PAUSE, EventType.RESUME) and not sid and not any(values.values()):
        raise InvalidEvent(
            f"sessionEvent.sessionId is required for {event_type.value}, or a platformCallId, "
            "agentPlatformId or userId that names one open session"
        )
    return SessionEvent(event_type=event_type, **values)
