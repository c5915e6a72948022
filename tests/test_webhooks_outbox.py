"""The webhook outbox: notices in the SQLite metadata store survive a restart of the notifier
(and of the whole server), resume in order with their noticeIds, and are not sent again once
delivered or given up; each sid's sequence continues where it was."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from webhook_receiver import WAIT_S, DownReceiver

import api.webhooks
from api.webhooks import Notifier, NotifierStoreError
from api.webhooks_wire import (
    NOTICE_ID_HEADER,
    SIGNATURE_HEADER,
    NotificationEvent,
    WebhookTarget,
    verify_signature,
)
from storage.meta import NoticeRow, NoticeState, NoticeWrites
from storage.meta_sqlite import SqliteMetaStore

SECRET = "s3cret-of-the-app"
FAST_RETRY = {"retry_base_s": 0.005, "retry_max_s": 0.02}
# a receiver that is down for the whole first run: retried without end within the test
PATIENT = {"attempts": 1000, "max_age_s": 3600.0, **FAST_RETRY}

Ev = NotificationEvent


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def down() -> AsyncIterator[DownReceiver]:
    receiver = DownReceiver()
    yield receiver
    await receiver.aclose()


class Run:
    """One life of the notifier: a store opened on the same file, a notifier started on it."""

    def __init__(self, http: aiohttp.ClientSession, path: Path, **options: Any) -> None:
        self.store = SqliteMetaStore(path)
        self.notifier = Notifier(http, store=self.store, **options)

    async def __aenter__(self) -> Run:
        await self.store.open()
        await self.notifier.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.notifier.aclose(drain_timeout=0)
        await self.store.aclose()

    async def notify(self, target: WebhookTarget, event: int, sid: str, **details: Any) -> str:
        return await self.notifier.notify(
            target, event, cname="room", uid="527841", sid=sid, details=details
        )

    async def joined(self) -> None:
        async with asyncio.timeout(WAIT_S):
            await self.notifier.join()

    async def pending(self) -> list[NoticeRow]:
        return await self.store.list_notices(NoticeState.PENDING)

    async def given_up(self) -> list[NoticeRow]:
        return await self.store.list_notices(NoticeState.GIVEN_UP)


class Logged(logging.Handler):
    """Sets ``event`` once ``count`` records whose message contains ``text`` were logged."""

    def __init__(self, text: str, count: int = 1) -> None:
        super().__init__(logging.INFO)
        self.text, self.count = text, count
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.count -= 1
            if self.count <= 0:
                self.event.set()

    async def __aenter__(self) -> Logged:
        logger = logging.getLogger("api.webhooks")
        self._level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        logger = logging.getLogger("api.webhooks")
        logger.removeHandler(self)
        logger.setLevel(self._level)


async def test_a_receiver_down_across_a_restart_gets_every_notice_after_it(
    http: aiohttp.ClientSession, down: DownReceiver, tmp_path: Path
) -> None:
    path = tmp_path / "meta.sqlite3"
    target = WebhookTarget(down.receiver.url, SECRET)
    raised: dict[str, list[str]] = {"sid-a": [], "sid-b": []}
    events = {"sid-a": [Ev.RECORDER_STARTED, Ev.UPLOADER_STARTED, Ev.RECORDER_SLICE_START,
                        Ev.RECORDER_LEAVE, Ev.UPLOADED, Ev.SESSION_EXIT],
              "sid-b": [Ev.RECORDER_STARTED, Ev.WARNING, Ev.ERROR]}  # fmt: skip
    async with Run(http, path, **PATIENT) as first, Logged("retry in", count=2) as retrying:
        for i in range(6):
            for sid in ("sid-a", "sid-b"):
                if i < len(events[sid]):
                    notice_id = await first.notify(target, events[sid][i], sid, n=i)
                    raised[sid].append(notice_id)
                    # in the outbox as soon as notify returns
                    assert notice_id in {r.notice_id for r in await first.pending()}
        async with asyncio.timeout(WAIT_S):
            await retrying.event.wait()  # the receiver was tried, and refused the connection
    assert down.receiver.hits == []

    receiver = await down.up()
    async with Run(http, path, **PATIENT) as second:
        assert second.notifier.stats.resumed == 9
        await receiver.wait_for(lambda: len(receiver.accepted()) == 9)
        await second.joined()
        assert await second.pending() == [] and await second.given_up() == []

        for sid, ids in raised.items():
            hits = receiver.accepted(sid)
            assert [h.notice_id for h in hits] == ids  # the original ids, in the raised order
            assert [h.sequence for h in hits] == list(range(len(ids)))
            assert [h.json["eventType"] for h in hits] == events[sid]
            assert [h.json["payload"]["details"]["n"] for h in hits] == list(range(len(ids)))
            for hit in hits:
                assert verify_signature(SECRET, hit.body, hit.headers[SIGNATURE_HEADER])
                assert hit.headers[NOTICE_ID_HEADER] == hit.notice_id
        assert receiver.max_in_flight_per_sid == 1
        assert len(receiver.hits) == 9  # nothing twice

        # numbering goes on after the restart: never a sequence the receiver has seen
        await second.notify(target, Ev.RECORDER_SLICE_START, "sid-a")
        await second.notify(target, Ev.RECORDER_STARTED, "sid-new")
        await receiver.wait_for(lambda: len(receiver.accepted()) == 11)
        assert receiver.accepted("sid-a")[-1].sequence == 6
        assert receiver.accepted("sid-new")[-1].sequence == 0


async def test_attempts_so_far_are_kept_across_a_restart(
    http: aiohttp.ClientSession, down: DownReceiver, tmp_path: Path
) -> None:
    path = tmp_path / "meta.sqlite3"
    target = WebhookTarget(down.receiver.url, SECRET)
    # one attempt, then a retry far away: the restart comes first
    slow_retry = {"retry_base_s": 60.0, "retry_max_s": 60.0, "max_age_s": 3600.0}
    async with Run(http, path, **slow_retry) as first, Logged("retry in") as retrying:
        notice_id = await first.notify(target, Ev.UPLOADED, "sid-a")
        async with asyncio.timeout(WAIT_S):
            await retrying.event.wait()
    async with Run(http, path, attempts=2, **FAST_RETRY) as second:
        # one attempt was made before the restart, so one more is all that is left
        await second.joined()
        assert second.notifier.stats.failed_attempts == 1
        await second.notifier.aclose()
        [row] = await second.given_up()
        assert row.notice_id == notice_id and row.attempts == 2
        assert row.reason.startswith("gave up after 2 attempts: ClientConnectorError")


async def test_closing_leaves_retries_to_the_next_start_instead_of_waiting(
    http: aiohttp.ClientSession, down: DownReceiver, tmp_path: Path
) -> None:
    target = WebhookTarget(down.receiver.url, SECRET)
    async with Run(http, tmp_path / "meta.sqlite3", **PATIENT) as run:
        async with Logged("retry in", count=2) as retrying:
            ids = {await run.notify(target, Ev.UPLOADED, sid) for sid in ("sid-a", "sid-b")}
            async with asyncio.timeout(WAIT_S):
                await retrying.event.wait()
        # the drain timeout is for requests under way; a receiver that is down has none
        async with asyncio.timeout(WAIT_S):
            await run.notifier.aclose(drain_timeout=WAIT_S * 10)
        rows = await run.pending()
        assert {r.notice_id for r in rows} == ids
        assert all(r.attempts >= 1 and "ClientConnectorError" in r.reason for r in rows)
        assert run.notifier.stats.dropped == 0


async def test_a_receiver_that_fails_once_gets_a_retry_and_the_row_goes(
    http: aiohttp.ClientSession, down: DownReceiver, tmp_path: Path
) -> None:
    receiver = await down.up()

    async def fail_first(notice: dict[str, Any], seen: int) -> int:
        return 503 if seen == 0 else 200

    receiver.behaviour = fail_first
    target = WebhookTarget(receiver.url, SECRET)
    async with Run(http, tmp_path / "meta.sqlite3", **FAST_RETRY) as run:
        notice_id = await run.notify(target, Ev.UPLOADED, "sid-a", status=0)
        await receiver.wait_for(lambda: len(receiver.accepted()) == 1)
        await run.joined()
        assert [(h.notice_id, h.status) for h in receiver.hits] == [
            (notice_id, 503),
            (notice_id, 200),
        ]
        await run.notifier.aclose()  # writes what is left: the delivery
        assert await run.pending() == [] and await run.given_up() == []
        assert await run.store.last_notice_sequence("sid-a") == 0


async def test_given_up_notices_are_not_sent_again_after_a_restart(
    http: aiohttp.ClientSession, down: DownReceiver, tmp_path: Path
) -> None:
    path = tmp_path / "meta.sqlite3"
    receiver = await down.up()

    async def refuse_warnings(notice: dict[str, Any], seen: int) -> int:
        return 400 if notice["eventType"] == Ev.WARNING else 200

    receiver.behaviour = refuse_warnings
    target = WebhookTarget(receiver.url, SECRET)
    nowhere = DownReceiver()  # never comes up
    try:
        async with Run(http, path, attempts=2, **FAST_RETRY) as first:
            refused = await first.notify(target, Ev.WARNING, "sid-a", warnCode=32)
            sent = await first.notify(target, Ev.RECORDER_STARTED, "sid-a")
            unreachable = await first.notify(
                WebhookTarget(nowhere.receiver.url, SECRET), Ev.UPLOADED, "sid-b"
            )
            await first.joined()
    finally:
        await nowhere.aclose()
    assert [h.notice_id for h in receiver.hits] == [refused, sent]

    async with Run(http, path, **FAST_RETRY) as second:
        assert second.notifier.pending == 0 and second.notifier.stats.resumed == 0
        reasons = {r.notice_id: r.reason for r in await second.given_up()}
        assert reasons[refused] == "refused: HTTP 400"
        assert reasons[unreachable].startswith("gave up after 2 attempts")
        assert set(reasons) == {refused, unreachable}
        # a new notice of the same sid goes out first: no old one was waiting in its lane
        later = await second.notify(target, Ev.SESSION_EXIT, "sid-a")
        await receiver.wait_for(lambda: len(receiver.hits) == 3)
        assert receiver.hits[-1].notice_id == later and receiver.hits[-1].sequence == 2


async def test_a_notice_too_old_at_start_is_given_up_unsent(
    http: aiohttp.ClientSession, down: DownReceiver, tmp_path: Path
) -> None:
    path = tmp_path / "meta.sqlite3"
    receiver = await down.up()
    store = SqliteMetaStore(path)
    await store.open()
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    rows = [
        NoticeRow(
            notice_id=f"n{i}",
            sid="sid-a",
            sequence=i,
            event_type=int(Ev.RECORDER_SLICE_START),
            url=receiver.url,
            secret=SECRET,
            payload=b'{"sid":"sid-a","sequence":%d}' % i,
            created_at=created,
        )
        for i, created in enumerate([hour_ago, datetime.now(UTC)])
    ]
    await store.write_notices(NoticeWrites(added=rows))
    await store.aclose()

    async with Run(http, path, max_age_s=600.0) as run:
        await receiver.wait_for(lambda: len(receiver.hits) == 1)
        await run.joined()
        assert receiver.hits[0].notice_id == "n1"
        await run.notifier.aclose()
        [stale] = await run.given_up()
        assert (stale.notice_id, stale.reason) == ("n0", "expired while the server was down")
        assert run.notifier.stats.dropped_expired == 1


async def test_the_queue_bound_gives_up_in_the_outbox_and_at_reload(
    http: aiohttp.ClientSession, down: DownReceiver, tmp_path: Path
) -> None:
    path = tmp_path / "meta.sqlite3"
    target = WebhookTarget(down.receiver.url, SECRET)
    # each lane's first notice fails once, then waits for a retry far away: none is in flight
    slow_retry = {"retry_base_s": 60.0, "retry_max_s": 60.0, "max_age_s": 3600.0}
    async with Run(http, path, max_queue=3, **slow_retry) as first:
        async with Logged("retry in", count=2) as retrying:
            slice_ = await first.notify(target, Ev.RECORDER_SLICE_START, "sid-a")
            leave = await first.notify(target, Ev.RECORDER_LEAVE, "sid-a")
            uploaded = await first.notify(target, Ev.UPLOADED, "sid-b")
            async with asyncio.timeout(WAIT_S):
                await retrying.event.wait()
        exit_ = await first.notify(target, Ev.SESSION_EXIT, "sid-b")  # full: the slice goes
        late_warning = await first.notify(target, Ev.WARNING, "sid-a")  # goes itself
        assert first.notifier.stats.dropped_overflow == 2
    # reloaded under a lower bound: the oldest of the lowest tier (the leave) goes
    receiver = await down.up()
    async with Run(http, path, max_queue=2, **PATIENT) as second:
        await receiver.wait_for(lambda: len(receiver.accepted()) == 2)
        await second.joined()
        assert [h.notice_id for h in receiver.hits] == [uploaded, exit_]
        await second.notifier.aclose()
        reasons = {r.notice_id: r.reason for r in await second.given_up()}
        assert reasons == {slice_: "queue_full", late_warning: "queue_full", leave: "queue_full"}
        # the warning was given up before it was ever queued, yet its number stays taken
        assert await second.store.last_notice_sequence("sid-a") == 2


async def test_sequences_continue_for_a_sid_forgotten_in_memory(
    http: aiohttp.ClientSession,
    down: DownReceiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api.webhooks, "MAX_TRACKED_SIDS", 2)
    receiver = await down.up()
    target = WebhookTarget(receiver.url, SECRET)
    async with Run(http, tmp_path / "meta.sqlite3") as run:
        for sid in ("a", "a", "b", "c", "a", "d", "b"):  # "a" and "b" are forgotten in between
            await run.notify(target, Ev.RECORDER_SLICE_START, sid)
        await receiver.wait_for(lambda: len(receiver.accepted()) == 7)
        sequences = {sid: [h.sequence for h in receiver.accepted(sid)] for sid in "abcd"}
        assert sequences == {"a": [0, 1, 2], "b": [0, 1], "c": [0], "d": [0]}


async def test_a_burst_is_written_in_a_few_transactions(
    http: aiohttp.ClientSession, down: DownReceiver, tmp_path: Path
) -> None:
    receiver = await down.up()
    target = WebhookTarget(receiver.url, SECRET)
    async with Run(http, tmp_path / "meta.sqlite3") as run:
        await run.notify(target, Ev.RECORDER_STARTED, "sid-a")  # the sid's counter read
        await receiver.wait_for(lambda: len(receiver.accepted()) == 1)
        await run.joined()
        before = dict((name, value) for name, _, _, value in run.notifier.samples())
        ids = await asyncio.gather(
            *(run.notify(target, Ev.RECORDER_SLICE_START, "sid-a", n=i) for i in range(50))
        )
        after = dict((name, value) for name, _, _, value in run.notifier.samples())
        # 50 notices stored before their notify returned, all in one transaction (plus, at
        # most, the first notice's delivery if it was being written when they came)
        writes = "reelhouse_webhooks_outbox_writes_total"
        assert 1 <= after[writes] - before[writes] <= 2
        await receiver.wait_for(lambda: len(receiver.accepted()) == 51)
        assert [h.notice_id for h in receiver.accepted()[1:]] == ids
        assert [h.sequence for h in receiver.accepted()] == list(range(51))


async def test_a_notice_the_outbox_cannot_store_is_refused_and_not_sent(
    http: aiohttp.ClientSession, down: DownReceiver, tmp_path: Path
) -> None:
    receiver = await down.up()
    target = WebhookTarget(receiver.url, SECRET)
    async with Run(http, tmp_path / "meta.sqlite3") as run:
        sent = await run.notify(target, Ev.RECORDER_STARTED, "sid-a")
        await receiver.wait_for(lambda: len(receiver.accepted()) == 1)
        await run.joined()
        await run.store.aclose()  # the store goes away under the notifier
        with pytest.raises(NotifierStoreError):
            await run.notify(target, Ev.UPLOADED, "sid-a")
        with pytest.raises(NotifierStoreError):  # a new sid: its counter cannot be read
            await run.notify(target, Ev.RECORDER_STARTED, "sid-new")
        await run.joined()
        assert run.notifier.pending == 0
        assert [h.notice_id for h in receiver.hits] == [sent]
        errors = {name: value for name, _, _, value in run.notifier.samples()}
        assert errors["reelhouse_webhooks_outbox_errors_total"] >= 1


async def test_notify_before_start_is_refused(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    store = SqliteMetaStore(tmp_path / "meta.sqlite3")
    await store.open()
    try:
        notifier = Notifier(http, store=store)
        with pytest.raises(RuntimeError, match="start"):
            await notifier.notify(
                WebhookTarget("http://127.0.0.1:9/hook", SECRET),
                Ev.WARNING,
                cname="room",
                uid="1",
                sid="s",
                details={},
            )
        await notifier.aclose()
    finally:
        await store.aclose()


async def test_old_given_up_notices_and_idle_counters_are_pruned(tmp_path: Path) -> None:
    store = SqliteMetaStore(tmp_path / "meta.sqlite3")
    await store.open()
    try:
        now = datetime.now(UTC)
        long_ago = now - timedelta(days=40)

        def row(notice_id: str, sid: str, sequence: int, created: datetime) -> NoticeRow:
            return NoticeRow(notice_id, sid, sequence, 2, "http://h/hook", SECRET, b"{}", created)

        await store.write_notices(
            NoticeWrites(
                added=[
                    row("old-given-up", "s-old", 0, long_ago),
                    row("old-pending", "s-pending", 0, long_ago),
                    row("new-given-up", "s-new", 0, now),
                ]
            )
        )
        await store.write_notices(
            NoticeWrites(
                given_up={
                    "old-given-up": (1, "refused: HTTP 400", long_ago),
                    "new-given-up": (1, "refused: HTTP 400", now),
                }
            )
        )
        removed = await store.prune_notices(now - timedelta(days=7), now - timedelta(days=31))
        # the old given-up notice, then its sid's counter (no notice of it left)
        assert removed == 2
        assert [r.notice_id for r in await store.list_notices(NoticeState.GIVEN_UP)] == [
            "new-given-up"
        ]
        assert await store.last_notice_sequence("s-old") is None
        assert await store.last_notice_sequence("s-pending") == 0  # a notice still holds it
        assert await store.last_notice_sequence("s-new") == 0
    finally:
        await store.aclose()


async def test_a_sequence_is_never_stored_twice(tmp_path: Path) -> None:
    store = SqliteMetaStore(tmp_path / "meta.sqlite3")
    await store.open()
    try:
        now = datetime.now(UTC)

        def row(notice_id: str, sequence: int) -> NoticeRow:
            return NoticeRow(notice_id, "sid-a", sequence, 2, "http://h/hook", SECRET, b"{}", now)

        await store.write_notices(NoticeWrites(added=[row("n0", 0)]))
        with pytest.raises(sqlite3.IntegrityError):
            await store.write_notices(NoticeWrites(added=[row("n1", 1), row("again", 0)]))
        # one transaction: nothing of the failed batch is kept
        assert [r.notice_id for r in await store.list_notices(NoticeState.PENDING)] == ["n0"]
        assert await store.last_notice_sequence("sid-a") == 0
    finally:
        await store.aclose()
