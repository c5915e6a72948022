"""The session event body and the state machine of seed 000."""

from __future__ import annotations

import pytest

from ingest.errors import InvalidEvent, RpcCode, TransitionNotAllowed
from ingest.events import EventType, SessionState, next_state, parse_event


def test_start_without_session_id_is_valid() -> None:
    ev = parse_event(
        {"sessionEvent": {"eventType": "EVENT_TYPE_START", "platformCallId": "call-1"}}
    )
    assert ev.event_type is EventType.START
    assert ev.session_id == ""
    assert ev.to_json() == {"eventType": "EVENT_TYPE_START", "platformCallId": "call-1"}


def test_snake_case_and_enum_numbers_are_accepted() -> None:
    ev = parse_event({"session_event": {"event_type": 4, "session_id": "s1"}})
    assert ev.event_type is EventType.PAUSE
    assert ev.session_id == "s1"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([], "JSON object"),
        ({}, "sessionEvent is required"),
        ({"sessionEvent": "x"}, "must be an object"),
        ({"sessionEvent": {"eventType": "EVENT_TYPE_NOPE"}}, "eventType must be one of"),
        ({"sessionEvent": {}}, "must be set"),
        ({"sessionEvent": {"eventType": "EVENT_TYPE_UNSPECIFIED"}}, "must be set"),
        ({"sessionEvent": {"eventType": "EVENT_TYPE_END"}}, "sessionId is required"),
        (
            {"sessionEvent": {"eventType": "EVENT_TYPE_START", "userId": 5}},
            "userId must be a string",
        ),
        ({"sessionEvent": {"eventType": "EVENT_TYPE_START", "userId": "u" * 129}}, "at most 128"),
        ({"sessionEvent": {"eventType": "EVENT_TYPE_START", "sessionId": "../x"}}, "may hold only"),
        (
            {"sessionEvent": {"eventType": "EVENT_TYPE_START", "color": "red"}},
            "unknown field 'color'",
        ),
        ({"sessionEvent": {"eventType": "EVENT_TYPE_START"}, "extra": 1}, "unknown field 'extra'"),
    ],
)
def test_bad_bodies_are_invalid_argument(body: object, fragment: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(body)
    assert fragment in info.value.message
    assert info.value.code is RpcCode.INVALID_ARGUMENT


ALLOWED = {
    (None, EventType.START): SessionState.RECORDING,
    (SessionState.RECORDING, EventType.PAUSE): SessionState.PAUSED,
    (SessionState.PAUSED, EventType.RESUME): SessionState.RECORDING,
    (SessionState.RECORDING, EventType.END): SessionState.ENDED,
    (SessionState.PAUSED, EventType.END): SessionState.ENDED,
    (SessionState.RECORDING, EventType.RECONNECT): SessionState.RECORDING,
    (SessionState.PAUSED, EventType.RECONNECT): SessionState.PAUSED,
}


@pytest.mark.parametrize("state", [None, *SessionState])
@pytest.mark.parametrize("event", [e for e in EventType if e is not EventType.UNSPECIFIED])
def test_every_transition(state: SessionState | None, event: EventType) -> None:
    expected = ALLOWED.get((state, event))
    if expected is None:
        with pytest.raises(TransitionNotAllowed) as info:
            next_state(state, event)
        assert info.value.code is RpcCode.FAILED_PRECONDITION
    else:
        assert next_state(state, event) is expected
