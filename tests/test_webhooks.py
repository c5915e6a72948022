"""The webhook notifier against a real aiohttp receiver on loopback, each test in memory and
with the SQLite outbox (the durable mode the server runs); restarts are in test_webhooks_outbox.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from webhook_receiver import WAIT_S, Receiver

from api.webhooks import Notifier, NotifierClosedError
from api.webhooks_wire import (
    NOTICE_ID_HEADER,
    SIGNATURE_HEADER,
    NotificationEvent,
    WebhookTarget,
    sign,
    verify_signature,
)
from storage.meta import NoticeState
from storage.meta_sqlite import SqliteMetaStore

SECRET = "s3cret-of-the-app"
FAST_RETRY = {"retry_base_s": 0.005, "retry_max_s": 0.02}  # retries without slowing the tests

Ev = NotificationEvent
MakeNotifier = Callable[..., Coroutine[Any, Any, Notifier]]


@pytest.fixture
async def receiver(aiohttp_server) -> Receiver:  # type: ignore[no-untyped-def]
    rec = Receiver()
    server = await aiohttp_server(rec.application(), host="127.0.0.1", port=0)
    rec.url = str(server.make_url("/hook"))
    return rec


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(params=["memory", "outbox"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SqliteMetaStore | None]:
    """No store (notices in memory only), or a real SQLite metadata store (the outbox)."""
    if request.param == "memory":
        yield None
        return
    meta = SqliteMetaStore(tmp_path / "meta.sqlite3")
    await meta.open()
    yield meta
    await meta.aclose()


@pytest.fixture
async def make_notifier(
    http: aiohttp.ClientSession, store: SqliteMetaStore | None
) -> AsyncIterator[MakeNotifier]:
    made: list[Notifier] = []

    async def make(**kwargs: Any) -> Notifier:
        notifier = Notifier(http, store=store, **kwargs)
        made.append(notifier)
        await notifier.start()
        return notifier

    yield make
    for notifier in made:
        await notifier.aclose(drain_timeout=0)


async def notify(
    notifier: Notifier, target: WebhookTarget, event: int, sid: str = "sid-a", **details: Any
) -> str:
    return await notifier.notify(
        target, event, cname="room", uid="527841", sid=sid, details=details
    )


async def joined(notifier: Notifier) -> None:
    """Until every notice raised is delivered or dropped, bounded by ``WAIT_S``."""
    async with asyncio.timeout(WAIT_S):
        await notifier.join()


def lane_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("webhook-lane:")]


async def test_in_order_signed_with_increasing_sequence(
    receiver: Receiver, make_notifier: MakeNotifier
) -> None:
    notifier = await make_notifier()
    target = WebhookTarget(receiver.url, SECRET)
    events = [Ev.RECORDER_STARTED, Ev.UPLOADER_STARTED, *[Ev.RECORDER_SLICE_START] * 15]
    events += [Ev.RECORDER_LEAVE, Ev.UPLOADED, Ev.SESSION_EXIT]
    ids = [await notify(notifier, target, e, n=i) for i, e in enumerate(events)]

    await receiver.wait_for(lambda: len(receiver.hits) == len(events))
    await joined(notifier)

    assert [h.notice_id for h in receiver.hits] == ids
    assert receiver.max_in_flight_per_sid == 1
    for i, (hit, event) in enumerate(zip(receiver.hits, events, strict=True)):
        assert verify_signature(SECRET, hit.body, hit.headers[SIGNATURE_HEADER])
        assert hit.headers[NOTICE_ID_HEADER] == hit.notice_id
        assert hit.headers["Content-Type"] == "application/json"
        body = hit.json
        assert list(body) == ["noticeId", "productId", "eventType", "notifyMs", "payload"]
        assert body["productId"] == 3 and body["eventType"] == event
        payload = body["payload"]
        assert payload["sequence"] == i
        assert (payload["cname"], payload["uid"], payload["sid"]) == ("room", "527841", "sid-a")
        assert payload["serviceType"] == 0
        assert payload["details"]["n"] == i
        assert payload["details"]["msgName"]
        assert body["notifyMs"] >= payload["sendts"] > 0
    assert receiver.hits[-1].json["payload"]["details"]["msgName"] == "session_exit"
    assert notifier.stats.sent == len(events) and notifier.stats.dropped == 0
    assert notifier.pending == 0


async def test_uploaded_carries_its_file_list(
    receiver: Receiver, make_notifier: MakeNotifier
) -> None:
    notifier = await make_notifier()
    files = [
        {
            "fileName": "sid_room.m3u8",
            "trackType": "audio_and_video",
            "uid": "0",
            "mixedAllUser": True,
            "isPlayable": True,
            "sliceStartTime": 1700000000000,
        }
    ]
    await notify(
        notifier, WebhookTarget(receiver.url, SECRET), Ev.UPLOADED, status=0, fileList=files
    )
    await notify(notifier, WebhookTarget(receiver.url, SECRET), Ev.RECORDER_LEAVE, leaveCode=2)
    await receiver.wait_for(lambda: len(receiver.hits) == 2)
    details = [h.json["payload"]["details"] for h in receiver.hits]
    assert details[0] == {"msgName": "uploaded", "status": 0, "fileList": files}
    assert details[1] == {"msgName": "recorder_leave", "leaveCode": 2}


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_failure_once_is_retried_with_the_same_notice_id_in_order(
    receiver: Receiver, make_notifier: MakeNotifier, status: int
) -> None:
    async def fail_first(notice: dict[str, Any], seen: int) -> int:
        return status if notice["payload"]["sequence"] == 0 and seen == 0 else 200

    receiver.behaviour = fail_first
    notifier = await make_notifier(**FAST_RETRY)
    target = WebhookTarget(receiver.url, SECRET)
    ids = [await notify(notifier, target, Ev.RECORDER_SLICE_START) for _ in range(3)]

    await receiver.wait_for(lambda: len(receiver.accepted()) == 3)
    await joined(notifier)  # the receiver logs a hit before its answer reaches the notifier
    assert [(h.notice_id, h.status) for h in receiver.hits] == [
        (ids[0], status),
        (ids[0], 200),
        (ids[1], 200),
        (ids[2], 200),
    ]
    first, again = receiver.hits[0], receiver.hits[1]
    assert first.json["payload"] == again.json["payload"]  # the same notice, sendts included
    assert again.json["notifyMs"] >= first.json["notifyMs"]
    assert verify_signature(SECRET, again.body, again.headers[SIGNATURE_HEADER])
    assert (notifier.stats.sent, notifier.stats.failed_attempts) == (3, 1)


async def test_refusal_is_not_retried(
    receiver: Receiver,
    make_notifier: MakeNotifier,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def refuse_first(notice: dict[str, Any], seen: int) -> int:
        return 400 if notice["payload"]["sequence"] == 0 else 200

    receiver.behaviour = refuse_first
    notifier = await make_notifier(**FAST_RETRY)
    target = WebhookTarget(receiver.url, SECRET)
    refused = await notify(notifier, target, Ev.WARNING, warnCode=32)
    later = await notify(notifier, target, Ev.SESSION_EXIT, exitStatus=0)

    # one lane per sid: had the refused notice been retried, the retry would come first
    await receiver.wait_for(lambda: len(receiver.accepted()) == 1)
    await joined(notifier)
    assert [(h.notice_id, h.status) for h in receiver.hits] == [(refused, 400), (later, 200)]
    assert notifier.stats.dropped_refused == 1 and notifier.stats.failed_attempts == 0
    assert any(getattr(r, "notice_id", None) == refused for r in caplog.records)


async def test_unreachable_receiver_is_retried_then_given_up(
    make_notifier: MakeNotifier, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as sock:  # a port that was just free: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    notifier = await make_notifier(attempts=3, **FAST_RETRY)
    caplog.set_level(logging.INFO, logger="api.webhooks")
    notice_id = await notify(notifier, WebhookTarget(f"http://127.0.0.1:{port}/hook", SECRET), 40)

    await joined(notifier)
    assert notifier.stats.failed_attempts == 3
    assert notifier.stats.dropped_expired == 1 and notifier.stats.sent == 0
    gave_up = [r for r in caplog.records if getattr(r, "reason", None) == "gave_up"]
    assert [r.notice_id for r in gave_up] == [notice_id]  # type: ignore[attr-defined]
    assert not lane_tasks()


async def test_too_old_is_given_up_before_its_attempts_run_out(
    make_notifier: MakeNotifier,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    notifier = await make_notifier(attempts=1000, max_age_s=0.05, **FAST_RETRY)
    await notify(notifier, WebhookTarget(f"http://127.0.0.1:{port}/hook", SECRET), Ev.UPLOADED)
    await joined(notifier)
    assert notifier.stats.dropped_expired == 1
    assert 1 <= notifier.stats.failed_attempts < 1000


class RetryScheduled(logging.Handler):
    """Sets an event when the notifier logs that it will retry (it logs on the loop thread)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "retry in" in record.getMessage():
            self.event.set()


async def test_a_notice_waiting_on_its_retry_can_be_dropped(
    receiver: Receiver, make_notifier: MakeNotifier
) -> None:
    async def fail_first(notice: dict[str, Any], seen: int) -> int:
        return 500 if notice["payload"]["sequence"] == 0 else 200

    receiver.behaviour = fail_first
    notifier = await make_notifier(max_queue=1, retry_base_s=0.1, retry_max_s=0.1)
    retrying = RetryScheduled()
    logger = logging.getLogger("api.webhooks")
    logger.addHandler(retrying)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        target = WebhookTarget(receiver.url, SECRET)
        warning = await notify(notifier, target, Ev.WARNING)
        async with asyncio.timeout(WAIT_S):
            await retrying.event.wait()
        error = await notify(notifier, target, Ev.ERROR)  # full: the waiting warning goes
        await joined(notifier)
    finally:
        logger.removeHandler(retrying)
        logger.setLevel(old_level)
    assert [(h.notice_id, h.status) for h in receiver.hits] == [(warning, 500), (error, 200)]
    assert notifier.stats.dropped_overflow == 1 and notifier.stats.sent == 1


async def test_timeout_is_retried(receiver: Receiver, make_notifier: MakeNotifier) -> None:
    never = asyncio.Event()  # set at the end so the hung handler returns

    calls: list[int] = []

    async def hang_first(notice: dict[str, Any], seen: int) -> int:
        calls.append(seen)
        if len(calls) == 1:
            await never.wait()
        return 200

    receiver.behaviour = hang_first
    notifier = await make_notifier(timeout_s=0.2, **FAST_RETRY)
    notice_id = await notify(notifier, WebhookTarget(receiver.url, SECRET), Ev.UPLOADED)
    await receiver.wait_for(lambda: len(receiver.accepted()) == 1)
    assert receiver.accepted()[0].notice_id == notice_id
    assert notifier.stats.failed_attempts == 1
    never.set()


async def test_a_slow_sid_does_not_hold_up_another(
    receiver: Receiver, make_notifier: MakeNotifier
) -> None:
    release = asyncio.Event()
    slow_arrived = asyncio.Event()

    async def slow_sid_waits(notice: dict[str, Any], seen: int) -> int:
        if notice["payload"]["sid"] == "slow":
            slow_arrived.set()
            await release.wait()
        return 200

    receiver.behaviour = slow_sid_waits
    notifier = await make_notifier()
    target = WebhookTarget(receiver.url, SECRET)
    slow = [await notify(notifier, target, Ev.RECORDER_STARTED, sid="slow") for _ in range(2)]
    async with asyncio.timeout(WAIT_S):
        await slow_arrived.wait()
    fast = [await notify(notifier, target, Ev.RECORDER_SLICE_START, sid="fast") for _ in range(3)]

    await receiver.wait_for(lambda: len(receiver.accepted("fast")) == 3)
    assert not release.is_set() and receiver.accepted("slow") == []
    assert [h.notice_id for h in receiver.accepted("fast")] == fast
    release.set()
    await receiver.wait_for(lambda: len(receiver.accepted("slow")) == 2)
    assert [h.notice_id for h in receiver.accepted("slow")] == slow
    assert [h.json["payload"]["sequence"] for h in receiver.accepted("fast")] == [0, 1, 2]


async def test_queue_bound_drops_lowest_tier_oldest_first(
    receiver: Receiver,
    make_notifier: MakeNotifier,
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()
    first_arrived = asyncio.Event()

    async def hold_first(notice: dict[str, Any], seen: int) -> int:
        if notice["payload"]["sequence"] == 0:
            first_arrived.set()
            await release.wait()
        return 200

    receiver.behaviour = hold_first
    notifier = await make_notifier(max_queue=5)
    target = WebhookTarget(receiver.url, SECRET)

    async def raise_(event: Ev) -> str:
        return await notify(notifier, target, event)

    held = await raise_(Ev.RECORDER_STARTED)  # in flight: never dropped
    async with asyncio.timeout(WAIT_S):
        await first_arrived.wait()
    uploaded = await raise_(Ev.UPLOADED)
    warning = await raise_(Ev.WARNING)
    slice_ = await raise_(Ev.RECORDER_SLICE_START)
    error = await raise_(Ev.ERROR)
    assert notifier.pending == 5

    snapshot = await raise_(Ev.RECORDER_SNAPSHOT_FILE)  # full: the oldest tier 0 (warning) goes
    leave = await raise_(Ev.RECORDER_LEAVE)  # tier 1 may push out tier 0: slice goes
    exit_ = await raise_(Ev.SESSION_EXIT)  # snapshot goes
    late_warning = await raise_(Ev.WARNING)  # only tiers 1-2 left: the new warning goes itself
    uploaded2 = await raise_(Ev.UPLOADED)  # tier 2 may push out tier 1: error (oldest) goes
    assert notifier.pending == 5
    assert notifier.stats.dropped_overflow == 5

    release.set()
    await receiver.wait_for(lambda: len(receiver.accepted()) == 5)
    await joined(notifier)
    assert [h.notice_id for h in receiver.hits] == [held, uploaded, leave, exit_, uploaded2]
    dropped = [r.notice_id for r in caplog.records if getattr(r, "reason", "") == "queue_full"]  # type: ignore[attr-defined]
    assert dropped == [warning, slice_, snapshot, late_warning, error]


async def test_queue_of_critical_notices_drops_the_oldest_loudly(
    receiver: Receiver,
    make_notifier: MakeNotifier,
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def hold(notice: dict[str, Any], seen: int) -> int:
        arrived.set()
        await release.wait()
        return 200

    receiver.behaviour = hold
    notifier = await make_notifier(max_queue=2)
    target = WebhookTarget(receiver.url, SECRET)
    held = await notify(notifier, target, Ev.UPLOADED)
    async with asyncio.timeout(WAIT_S):
        await arrived.wait()
    queued = await notify(notifier, target, Ev.UPLOADED)
    newest = await notify(notifier, target, Ev.SESSION_EXIT)
    release.set()
    await receiver.wait_for(lambda: len(receiver.accepted()) == 2)
    await joined(notifier)
    assert [h.notice_id for h in receiver.hits] == [held, newest]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.notice_id for r in errors] == [queued]  # type: ignore[attr-defined]


async def test_aclose_waits_a_little_then_stops_without_leaks(
    receiver: Receiver, make_notifier: MakeNotifier, store: SqliteMetaStore | None
) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def hang(notice: dict[str, Any], seen: int) -> int:
        arrived.set()
        await release.wait()
        return 200

    receiver.behaviour = hang
    notifier = await make_notifier()
    target = WebhookTarget(receiver.url, SECRET)
    for sid in ("a", "b"):
        for _ in range(2):
            await notify(notifier, target, Ev.RECORDER_SLICE_START, sid=sid)
    async with asyncio.timeout(WAIT_S):
        await arrived.wait()

    await notifier.aclose(drain_timeout=0.05)
    assert notifier.pending == 0 and not lane_tasks()
    if store is None:
        assert notifier.stats.dropped_closed == 4
    else:  # kept for the next start, not dropped
        assert notifier.stats.dropped_closed == 0
        assert len(await store.list_notices(NoticeState.PENDING)) == 4
    await notifier.aclose()  # harmless
    with pytest.raises(NotifierClosedError):
        await notify(notifier, target, Ev.WARNING)
    release.set()


async def test_aclose_drains_what_it_can(receiver: Receiver, make_notifier: MakeNotifier) -> None:
    notifier = await make_notifier()
    target = WebhookTarget(receiver.url, SECRET)
    for _ in range(3):
        await notify(notifier, target, Ev.RECORDER_SLICE_START)
    await notifier.aclose(drain_timeout=WAIT_S)
    assert len(receiver.accepted()) == 3 and notifier.stats.dropped == 0


def test_verify_signature_rejects_tampering() -> None:
    body = b'{"noticeId":"abc","payload":{"sid":"x"}}'
    header = sign(SECRET, body)
    assert header.startswith("v1=") and len(header) == 3 + 64
    assert verify_signature(SECRET, body, header)
    assert not verify_signature(SECRET, body.replace(b"x", b"y"), header)
    assert not verify_signature("another-secret", body, header)
    assert not verify_signature(SECRET, body, header.upper())
    assert not verify_signature(SECRET, body, None)
    assert not verify_signature(SECRET, body, "")
    assert not verify_signature(SECRET, body, "v1=zz\u00e9")
    assert verify_signature(SECRET, body, f"v1={'0' * 64}, {header}")  # a rotation's pair


async def test_bad_input_is_refused_when_raised(make_notifier: MakeNotifier) -> None:
    with pytest.raises(ValueError):
        WebhookTarget("ftp://example.com/hook", SECRET)
    with pytest.raises(ValueError):
        WebhookTarget("/relative", SECRET)
    with pytest.raises(ValueError):
        WebhookTarget("http://example.com/hook", "")
    assert SECRET not in repr(WebhookTarget("http://example.com/hook", SECRET))
    notifier = await make_notifier()
    target = WebhookTarget("http://127.0.0.1:9/hook", SECRET)
    with pytest.raises(ValueError):
        await notify(notifier, target, 99)
    with pytest.raises(ValueError):
        await notify(notifier, target, Ev.WARNING, bad=float("nan"))
    with pytest.raises(ValueError):
        await notify(notifier, target, Ev.WARNING, big="x" * 100_000)
    assert notifier.pending == 0


async def test_metrics_samples(make_notifier: MakeNotifier) -> None:
    names = {name for name, *_ in (await make_notifier()).samples()}
    assert names == {
        "reelhouse_webhooks_pending",
        "reelhouse_webhooks_sent_total",
        "reelhouse_webhooks_failed_attempts_total",
        "reelhouse_webhooks_dropped_total",
        "reelhouse_webhooks_outbox_writes_total",
        "reelhouse_webhooks_outbox_errors_total",
    }
