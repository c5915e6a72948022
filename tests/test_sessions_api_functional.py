"""The screen recorder API (seed 000) against a real server: events, states, errors."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl
from conftest import Server
from recording import synced_rows
from wsclient import RawClient

from api.app import META_FILE
from api.auth import create_tenant_key
from api.keys import META, SESSIONS
from ingest.errors import CloseCode

EVENT_PATH = "/v1/customers/acme/profiles/support:processScreenRecordingSessionEvent"


async def post_event(
    http: aiohttp.ClientSession,
    server: Server,
    event: dict[str, Any],
    *,
    path: str = EVENT_PATH,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    async with http.post(
        server.url + path,
        json={"sessionEvent": event},
        headers=server.auth if headers is None else headers,
    ) as resp:
        return resp.status, await resp.json()


async def get_session(
    http: aiohttp.ClientSession, server: Server, sid: str, profile: str = "acme/profiles/support"
) -> tuple[int, dict[str, Any]]:
    async with http.get(
        f"{server.url}/v1/customers/{profile}/screenRecordingSessions/{sid}", headers=server.auth
    ) as resp:
        return resp.status, await resp.json()


async def test_session_lifecycle(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        status, body = await post_event(
            http,
            server,
            {
                "eventType": "EVENT_TYPE_START",
                "platformCallId": "c1",
                "agentPlatformId": "a1",
                "userId": "u1",
            },
        )
        assert status == 200, body
        sid = body["sessionEvent"]["sessionId"]
        assert sid and body["session"]["state"] == "RECORDING"
        assert body["sessionEvent"]["platformCallId"] == "c1"
        for event, state in [
            ("EVENT_TYPE_PAUSE", "PAUSED"),
            ("EVENT_TYPE_RECONNECT", "PAUSED"),
            ("EVENT_TYPE_RESUME", "RECORDING"),
            ("EVENT_TYPE_END", "ENDED"),
        ]:
            status, body = await post_event(http, server, {"eventType": event, "sessionId": sid})
            assert status == 200, body
            assert body["session"]["state"] == state
        status, got = await get_session(http, server, sid)
        assert status == 200
        assert got["state"] == "ENDED" and got["endTime"]
        assert got["name"] == f"customers/acme/profiles/support/screenRecordingSessions/{sid}"
        assert [e["eventType"] for e in got["events"]] == [
            "EVENT_TYPE_START",
            "EVENT_TYPE_PAUSE",
            "EVENT_TYPE_RECONNECT",
            "EVENT_TYPE_RESUME",
            "EVENT_TYPE_END",
        ]
        assert not any(e["acked"] for e in got["events"])  # no recording app was connected


async def test_a_started_session_outlives_a_power_cut_before_its_answer(
    server: Server, tmp_path: Path
) -> None:
    """Frames are acknowledged once in the writer's WAL, and a start drops the WAL of a
    session it does not know: START answers only once the row is synced, not just committed
    (the database file alone, as a power cut would leave it, holds it)."""
    async with aiohttp.ClientSession() as http:
        status, body = await post_event(http, server, {"eventType": "EVENT_TYPE_START"})
    assert status == 200, body
    rows = await asyncio.to_thread(
        synced_rows, server.data_dir / META_FILE, tmp_path, "SELECT session_id FROM sessions"
    )
    assert rows == [(body["sessionEvent"]["sessionId"],)]


async def test_start_with_a_chosen_id_then_again_is_already_exists(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        status, body = await post_event(
            http, server, {"eventType": "EVENT_TYPE_START", "sessionId": "mine-1"}
        )
        assert status == 200 and body["sessionEvent"]["sessionId"] == "mine-1"
        status, body = await post_event(
            http, server, {"eventType": "EVENT_TYPE_START", "sessionId": "mine-1"}
        )
        assert status == 409 and body["code"] == 6 and "already exists" in body["message"]


@pytest.mark.parametrize(
    ("events", "status", "code", "fragment"),
    [
        (["EVENT_TYPE_RESUME"], 400, 9, "EVENT_TYPE_RESUME is not allowed"),
        (["EVENT_TYPE_PAUSE", "EVENT_TYPE_PAUSE"], 400, 9, "state PAUSED"),
        (["EVENT_TYPE_END", "EVENT_TYPE_END"], 400, 9, "state ENDED"),
        (
            ["EVENT_TYPE_END", "EVENT_TYPE_RECONNECT"],
            400,
            9,
            "EVENT_TYPE_RECONNECT is not allowed for a session in state ENDED",
        ),
    ],
)
async def test_transitions_not_allowed(
    server: Server, events: list[str], status: int, code: int, fragment: str
) -> None:
    async with aiohttp.ClientSession() as http:
        _, body = await post_event(http, server, {"eventType": "EVENT_TYPE_START"})
        sid = body["sessionEvent"]["sessionId"]
        for event in events[:-1]:
            ok, _ = await post_event(http, server, {"eventType": event, "sessionId": sid})
            assert ok == 200
        got_status, body = await post_event(
            http, server, {"eventType": events[-1], "sessionId": sid}
        )
        assert (got_status, body["code"]) == (status, code), body
        assert fragment in body["message"]
        assert body["details"] == []


async def test_pause_and_resume_may_name_the_session_by_platform_ids(server: Server) -> None:
    """The seed uses sessionId for END and RECONNECT: PAUSE and RESUME find the one open
    session of the profile that has the platform ids they give."""
    async with aiohttp.ClientSession() as http:
        sids = []
        for call in ("c1", "c2"):
            start = {"eventType": "EVENT_TYPE_START", "platformCallId": call, "userId": "u1"}
            _, body = await post_event(http, server, start)
            sids.append(body["sessionEvent"]["sessionId"])
        status, body = await post_event(
            http, server, {"eventType": "EVENT_TYPE_PAUSE", "platformCallId": "c2"}
        )
        assert status == 200, body
        assert body["sessionEvent"]["sessionId"] == sids[1]
        assert body["session"]["state"] == "PAUSED"
        assert (await get_session(http, server, sids[0]))[1]["state"] == "RECORDING"
        # both sessions have userId u1: which one is meant is not said
        status, body = await post_event(
            http, server, {"eventType": "EVENT_TYPE_RESUME", "userId": "u1"}
        )
        assert (status, body["code"]) == (400, 3) and "give the sessionId" in body["message"]
        status, body = await post_event(
            http,
            server,
            {"eventType": "EVENT_TYPE_RESUME", "userId": "u1", "platformCallId": "c2"},
        )
        assert (status, body["session"]["state"]) == (200, "RECORDING")
        status, body = await post_event(
            http, server, {"eventType": "EVENT_TYPE_PAUSE", "platformCallId": "c3"}
        )
        assert (status, body["code"]) == (404, 5)
        # another profile's sessions are not found by their ids
        other = "/v1/customers/acme/profiles/other:processScreenRecordingSessionEvent"
        status, body = await post_event(
            http, server, {"eventType": "EVENT_TYPE_PAUSE", "platformCallId": "c1"}, path=other
        )
        assert (status, body["code"]) == (404, 5)
        # END and RECONNECT name their session by sessionId only
        for kind in ("EVENT_TYPE_END", "EVENT_TYPE_RECONNECT"):
            status, body = await post_event(
                http, server, {"eventType": kind, "platformCallId": "c1"}
            )
            assert (status, body["code"]) == (400, 3) and "sessionId is required" in body["message"]


async def test_unknown_session_and_other_profile_are_not_found(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        status, body = await post_event(
            http, server, {"eventType": "EVENT_TYPE_END", "sessionId": "nope"}
        )
        assert (status, body["code"]) == (404, 5)
        _, body = await post_event(http, server, {"eventType": "EVENT_TYPE_START"})
        sid = body["sessionEvent"]["sessionId"]
        other = "/v1/customers/acme/profiles/other:processScreenRecordingSessionEvent"
        status, body = await post_event(
            http, server, {"eventType": "EVENT_TYPE_PAUSE", "sessionId": sid}, path=other
        )
        assert (status, body["code"]) == (404, 5)
        status, body = await get_session(http, server, sid, profile="acme/profiles/other")
        assert (status, body["code"]) == (404, 5)


@pytest.mark.parametrize("customer", ["%2E%2E", "a%0Ab", "a%5Cb", "c" * 129, "-x"])
async def test_customer_and_profile_ids_that_cannot_name_objects_are_invalid_argument(
    server: Server, customer: str
) -> None:
    """They name the session's objects: refused at once, not left to fail every upload."""
    start = {"sessionEvent": {"eventType": "EVENT_TYPE_START"}}
    paths = [
        f"/v1/customers/{customer}/profiles/p:processScreenRecordingSessionEvent",
        f"/v1/customers/acme/profiles/{customer}:processScreenRecordingSessionEvent",
    ]
    async with aiohttp.ClientSession() as http:
        for path in paths:
            url = yarl.URL(server.url + path, encoded=True)
            async with http.post(url, json=start, headers=server.auth) as resp:
                body = await resp.json()
            assert (resp.status, body["code"]) == (400, 3), body
            assert "may hold only" in body["message"]
        url = yarl.URL(
            f"{server.url}/v1/customers/{customer}/profiles/p/screenRecordingSessions/x",
            encoded=True,
        )
        async with http.get(url, headers=server.auth) as resp:
            assert (resp.status, (await resp.json())["code"]) == (400, 3)
    assert not server.app[SESSIONS].sessions  # type: ignore[attr-defined]


async def test_deeply_nested_json_is_invalid_argument(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            server.url + EVENT_PATH, data=b"[" * 50_000, headers=server.auth
        ) as resp:
            body = await resp.json()
    assert (resp.status, body["code"]) == (400, 3) and "nested" in body["message"]


async def test_ids_that_name_another_api_are_ids_all_the_same(server: Server) -> None:
    """A customer or profile called ``cloud_recording`` is this API's, errors included."""
    path = "/v1/customers/cloud_recording/profiles/cloud_recording"
    async with aiohttp.ClientSession() as http:
        status, body = await post_event(
            http,
            server,
            {"eventType": "EVENT_TYPE_START"},
            path=path + ":processScreenRecordingSessionEvent",
        )
        assert status == 200, body
        sid = body["sessionEvent"]["sessionId"]
        status, body = await get_session(http, server, sid, profile=path[14:])
        assert (status, body["state"]) == (200, "RECORDING")
        status, body = await get_session(http, server, "nope", profile=path[14:])
        assert (status, body["code"], body["details"]) == (404, 5, [])  # rpcStatus


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"sessionEvent": {"eventType": "EVENT_TYPE_PAUSE"}}', "sessionId is required"),
        (b'{"sessionEvent": {"eventType": "BOGUS"}}', "eventType must be one of"),
        (
            b'{"sessionEvent": {"eventType": "EVENT_TYPE_START", "userId": 7}}',
            "userId must be a string",
        ),
        (
            b'{"sessionEvent": {"eventType": "EVENT_TYPE_START"}, "x": ' + b"1" * 70000 + b"}",
            "larger than",
        ),
    ],
)
async def test_bad_bodies_are_invalid_argument(
    server: Server, payload: bytes, fragment: str
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            server.url + EVENT_PATH,
            data=payload,
            headers={**server.auth, "Content-Type": "application/json"},
        ) as resp,
    ):
        body = await resp.json()
        assert resp.status == 400 and body["code"] == 3, body
        assert fragment in body["message"]


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic dXNlcjpwYXNz", "Bearer "])
async def test_missing_or_wrong_credentials_are_unauthenticated(
    server: Server, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    async with aiohttp.ClientSession() as http:
        status, body = await post_event(
            http, server, {"eventType": "EVENT_TYPE_START"}, headers=headers
        )
        assert (status, body["code"]) == (401, 16)
        async with http.get(
            server.url + "/v1/customers/a/profiles/b/screenRecordingSessions/x", headers=headers
        ) as resp:
            assert resp.status == 401 and (await resp.json())["code"] == 16


async def test_a_path_that_only_begins_like_a_public_one_needs_the_key(server: Server) -> None:
    """The public paths are whole names (and the folders under them): ``/healthzX`` or
    ``/v1/recordingsX`` is one more path that takes the server's key, 401 as the docs say,
    not a 404 that tells an unauthenticated caller what is not there."""
    async with aiohttp.ClientSession() as http:
        paths = ("/healthzX", "/metrics.txt", "/v1/recordingsX", "/v1/ingest2", "/publishing",
                 "/v1/objects", "/v1/apps")  # fmt: skip
        for path in paths:
            async with http.get(server.url + path) as resp:
                assert (resp.status, (await resp.json())["code"]) == (401, 16), path
        async with http.get(server.url + "/healthz") as resp:
            assert resp.status == 200
        async with http.get(server.url + "/v1/recordings") as resp:  # (its own keys and shape)
            assert (resp.status, (await resp.json())["error"]["code"]) == (401, "unauthorized")


async def test_a_tenant_key_of_the_recordings_api_reaches_no_session(server: Server) -> None:
    """Tenant keys are handed to a browser extension's users: the recordings API takes them,
    the operator's APIs (every customer's sessions, their downloads, ingest) do not."""
    key, _ = await create_tenant_key(server.app[META], "acme", "alice")  # type: ignore[index]
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as http:
        _, started = await post_event(http, server, {"eventType": "EVENT_TYPE_START"})
        sid = started["sessionEvent"]["sessionId"]
        status, body = await post_event(
            http, server, {"eventType": "EVENT_TYPE_END", "sessionId": sid}, headers=headers
        )
        assert (status, body["code"]) == (401, 16)
        async with http.get(
            f"{server.url}/v1/customers/acme/profiles/support/screenRecordingSessions/{sid}",
            headers=headers,
        ) as resp:
            assert resp.status == 401
        client = RawClient(http, server.url)
        await client.connect()
        with pytest.raises(ConnectionError) as refused:
            await client.hello(key, session_id=sid)
        assert refused.value.args[0] == CloseCode.UNAUTHENTICATED
        async with http.get(server.url + "/v1/recordings", headers=headers) as resp:
            assert resp.status == 200  # (its own API takes it)


async def test_healthz_and_metrics(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/healthz") as resp:
            assert resp.status == 200
            health = await resp.json()
        lanes = len(server.app[SESSIONS].pool.lanes)  # type: ignore[index]
        assert health["status"] == "ok" and health["spoolFull"] is False
        assert health["writerLanes"] == {"running": lanes, "configured": lanes}
        await post_event(http, server, {"eventType": "EVENT_TYPE_START"})
        async with http.get(server.url + "/metrics") as resp:
            text = await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        values = dict(
            line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
        )
        assert values["reelhouse_sessions_active"] == "1"
        assert values["reelhouse_sessions_started_total"] == "1"
        for name in (
            "reelhouse_bytes_in_total",
            "reelhouse_segments_written_total",
            "reelhouse_upload_queue_depth",
        ):
            assert name in values


async def test_idle_session_is_ended(server_factory: Any) -> None:
    """A session with no connection, media or event for idle_end_s is ended by the server."""
    server = await server_factory(ingest={"idle_end_s": 0.2})
    async with aiohttp.ClientSession() as http:
        _, body = await post_event(http, server, {"eventType": "EVENT_TYPE_START"})
        sid = body["sessionEvent"]["sessionId"]
        await server.app[SESSIONS].wait_ended(sid, timeout=10)  # type: ignore[index]
        status, got = await get_session(http, server, sid)
    assert status == 200 and got["state"] == "ENDED"
    assert [e["eventType"] for e in got["events"]] == ["EVENT_TYPE_START", "EVENT_TYPE_END"]


async def test_idle_end_spares_a_session_that_came_back(server_factory: Any) -> None:
    """The idle reaper decides to end a session, then waits for its lock (an event in flight);
    a client connects meanwhile: once the reaper holds the lock it sees that and lets it be."""
    server = await server_factory(ingest={"idle_end_s": 0.2})
    manager = server.app[SESSIONS]  # type: ignore[index]
    deciding, spared = asyncio.Event(), asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "ending idle session":
                deciding.set()
            elif record.getMessage() == "idle end skipped: active again":
                spared.set()

    watch, logger = Watch(), logging.getLogger("ingest.sessions")
    level = logger.level
    logger.addHandler(watch)
    logger.setLevel(logging.INFO)
    try:
        async with aiohttp.ClientSession() as http:
            _, body = await post_event(http, server, {"eventType": "EVENT_TYPE_START"})
            sid = body["sessionEvent"]["sessionId"]
            live = manager.sessions[sid]
            async with live.lock:  # (as an event being carried out holds it)
                await asyncio.wait_for(deciding.wait(), 10)
                client = RawClient(http, server.url)
                await client.connect()
                await client.hello(server.api_key, session_id=sid)
            await asyncio.wait_for(spared.wait(), 10)
            status, got = await get_session(http, server, sid)
            assert status == 200 and got["state"] == "RECORDING", got
            await client.send({"t": "ping", "ts": 1})
            while (await client.recv())["t"] != "pong":  # still connected (the start's
                pass  # control comes first)
            await client.close()
    finally:
        logger.removeHandler(watch)
        logger.setLevel(level)


async def test_concurrent_starts_with_one_id(server: Server) -> None:
    """Two STARTs racing for the same sessionId: one wins, the other is ALREADY_EXISTS."""
    async with aiohttp.ClientSession() as http:
        event = {"eventType": "EVENT_TYPE_START", "sessionId": "raced"}
        results = await asyncio.gather(*(post_event(http, server, event) for _ in range(4)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 409, 409, 409], results
    assert all(body["code"] == 6 for status, body in results if status == 409)
