"""Notification callbacks of the cloud recording API: signed JSON POSTs to each app's URL.

Why this shape: an app that records with that API learns what happened (recorder started, a
slice began, files uploaded, the session exited) only through these callbacks, and it orders and
dedupes them itself. So each notice carries a ``noticeId`` that stays the same across retries
(dedupe) and a ``sequence`` counted per ``sid`` from 0 (order), and a sid's notices go out one
at a time, in the order they were raised, while different sids deliver in parallel: one slow
session never holds up another.

A receiver that is down gets retries with exponential backoff and jitter (network errors,
timeouts, 5xx, 429) up to ``attempts`` tries or ``max_age_s``; a receiver that answers any
other non-2xx refused the notice, and retrying would only get the same answer.

Durability, with a ``NoticeStore`` (the metadata store; the server always gives one): a notice
is in the store's outbox before ``notify`` returns. A 2xx deletes it; a refusal, running out
of attempts or of ``max_age_s``, or the drop policy marks it given up, with the reason, and it
is never sent again. ``start`` reloads the notices neither delivered nor given up and resumes
them, per sid in sequence order, with their ``noticeId``, ``sequence``, payload and attempts
so far (a notice already older than ``max_age_s`` is given up, not sent); each sid's sequence
continues from the highest number the store ever gave it, so none is reused. ``aclose``
gives requests under way ``drain_timeout`` to finish but does not wait out a retry's backoff:
that notice, and the rest of its sid, stay pending for the next ``start``. Delivery is at
least once: a notice whose 2xx came in just before a crash, or whose request ``aclose``
cancelled, is sent again after the restart, with the same ``noticeId`` for the receiver to
dedupe. The outbox writes are group-committed off the event loop (``webhooks_outbox``), so a
burst of notices costs a couple of transactions. Without a store (tests, embedding) the same
rules hold in memory only, and ``aclose`` drains what it can, then drops what is left.

Drop policy, when ``max_queue`` notices are pending (in the outbox and not yet delivered or
given up: queued, waiting on a retry, or in flight) and another one is raised: the outbox is
the bound, so one pending notice is given up (reason ``queue_full``) to make room. The oldest
pending notice of the lowest tier goes, looking only at tiers no higher than the new notice's
own (so a new warning never pushes out an older "uploaded"; it is given up itself instead, and
still stored, so its sequence is not reused). Tiers, dropped first to last:

0. progress and advice: 2 warning, 42 slice start, 45 snapshot file, 30 uploader started;
1. state changes: 40 recorder started, 41 recorder leave, 1 error;
2. what a receiver cannot do without: 31 uploaded (the file list) and 11 session exit.

A notice whose HTTP request is under way is never dropped (it may already have arrived). Every
drop is logged with its sid, noticeId and event type, and counted; a dropped notice keeps its
``sequence``, so the receiver sees a gap where one was lost. The same bound applies when
``start`` reloads more than ``max_queue`` notices (after ``max_queue`` was lowered).

Memory is bounded: every pending notice is also held in memory, so at most ``max_queue``
notices of at most ``MAX_PAYLOAD_BYTES`` each, at most ``max_in_flight`` requests, one task
per sid with pending notices, and the sequence counters of the last ``MAX_TRACKED_SIDS`` sids
(a forgotten one is read back from the store).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

import aiohttp

from storage.meta import NoticeRow, NoticeState, NoticeStore

from .metrics import Sample
from .webhooks_outbox import OutboxWriter
from .webhooks_wire import (
    _TIER_COUNT,
    DROP_TIERS,
    MSG_NAMES,
    NOTICE_ID_HEADER,
    PRODUCT_ID_CLOUD_RECORDING,
    SERVICE_TYPE_RECORDING,
    SIGNATURE_HEADER,
    NotificationEvent,
    WebhookTarget,
    sign,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE = 1000
DEFAULT_RETRY_BASE_S = 0.5
DEFAULT_RETRY_MAX_S = 30.0
# 10 tries with the defaults above span about two minutes (0.5 + 1 + ... + 30 s, jittered):
# long enough to ride out a receiver's restart, short enough that a dead URL frees its sid
DEFAULT_ATTEMPTS = 10
DEFAULT_MAX_AGE_S = 900.0  # a notice older than this is stale: the app has polled by then
DEFAULT_TIMEOUT_S = 10.0  # one POST, connect to last byte of the answer
DEFAULT_MAX_IN_FLIGHT = 64  # concurrent POSTs over all apps and sids
DEFAULT_DRAIN_TIMEOUT_S = 5.0
# a notice's payload as JSON: an "uploaded" file list of 32 uids x audio/video playlists is a
# few KiB, so this leaves room while keeping max_queue x this within tens of MiB
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_TRACKED_SIDS = 10_000  # sequence counters kept; the least recently used is forgotten


class NotifierClosedError(RuntimeError):
    """``notify`` was called after ``aclose``."""


class NotifierStoreError(RuntimeError):
    """The outbox could not store a notice, so it will not be sent (the cause is chained)."""


@dataclass(slots=True)
class NotifierStats:
    """Counters since start, read by ``/metrics``."""

    sent: int = 0  # notices a receiver accepted (2xx)
    failed_attempts: int = 0  # POSTs that will be (or would have been) retried
    dropped_overflow: int = 0  # pushed out by the queue bound
    dropped_refused: int = 0  # the receiver answered a non-retryable status
    dropped_expired: int = 0  # out of attempts or past the max age
    dropped_closed: int = 0  # without a store: still pending when ``aclose`` gave up waiting
    resumed: int = 0  # reloaded from the outbox by ``start``

    @property
    def dropped(self) -> int:
        """Notices that will never be delivered, for whatever reason."""
        return (
            self.dropped_overflow
            + self.dropped_refused
            + self.dropped_expired
            + self.dropped_closed
        )


@dataclass(eq=False, slots=True)
class _Notice:
    """One pending notice; identity-compared, so a lane can remove exactly this one."""

    notice_id: str
    target: WebhookTarget
    event: NotificationEvent
    sid: str
    sequence: int
    payload: bytes  # the JSON ``payload`` object, encoded once when raised
    created: float  # wall-clock seconds, for the max age: it must mean the same after a restart
    tier: int
    attempts: int = 0
    sending: bool = False  # an HTTP request is under way: may have arrived, never dropped
    dropped: bool = False  # dropped while waiting (on its write, a retry, a slot): skipped
    # resolved once the outbox holds it (None: nothing to wait for); the lane sends after that
    stored: asyncio.Future[None] | None = None

    def row(self, state: NoticeState = NoticeState.PENDING, reason: str = "") -> NoticeRow:
        """The notice as the outbox stores it."""
        return NoticeRow(
            notice_id=self.notice_id,
            sid=self.sid,
            sequence=self.sequence,
            event_type=int(self.event),
            url=self.target.url,
            secret=self.target.secret,
            payload=self.payload,
            created_at=datetime.fromtimestamp(self.created, UTC),
            attempts=self.attempts,
            state=state,
            reason=reason,
            finished_at=datetime.now(UTC) if state is NoticeState.GIVEN_UP else None,
        )


@dataclass(eq=False, slots=True)
class _Lane:
    """The notices of one sid, delivered one at a time by one task."""

    sid: str
    queue: deque[_Notice] = field(default_factory=deque)
    current: _Notice | None = None  # taken off the queue, being delivered or retried
    task: asyncio.Task[None] | None = None


class _Outcome(IntEnum):
    SENT = 0
    RETRY = 1
    REFUSED = 2


class Notifier:
    """Delivers notices to apps' webhook URLs: signed, in order per sid, retried, bounded, and
    with a ``store``, durable (see the module docstring).

    ``http`` is the caller's session (its connector limits and closing stay with the caller);
    ``aclose`` must be awaited before that session and the store are closed. With a store,
    ``start`` must be awaited before ``notify``. Keep ``max_in_flight`` well below
    ``max_queue``: requests under way are not droppable, so the bound needs others to choose from.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        store: NoticeStore | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        retry_base_s: float = DEFAULT_RETRY_BASE_S,
        retry_max_s: float = DEFAULT_RETRY_MAX_S,
        attempts: int = DEFAULT_ATTEMPTS,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        if max_queue < 1 or attempts < 1 or max_in_flight < 1:
            raise ValueError("max_queue, attempts and max_in_flight must be at least 1")
        if retry_base_s < 0 or retry_max_s < retry_base_s or max_age_s <= 0 or timeout_s <= 0:
            raise ValueError("need 0 <= retry_base_s <= retry_max_s and positive max_age/timeout")
        self._http = http
        self._store = store
        self._outbox = OutboxWriter(store) if store is not None else None
        self._started = store is None  # in memory there is nothing to reload
        self._max_queue = max_queue
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._attempts = attempts
        self._max_age_s = max_age_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._lanes: dict[str, _Lane] = {}
        # every pending notice by tier, oldest first: where the queue bound finds its victim
        self._tiers: tuple[OrderedDict[str, _Notice], ...] = tuple(
            OrderedDict() for _ in range(_TIER_COUNT)
        )
        self._sequences: OrderedDict[str, int] = OrderedDict()
        self._loading: dict[str, asyncio.Task[None]] = {}  # sequence reads, one per sid
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._closing = asyncio.Event()  # set by ``aclose``: wakes lanes waiting on a retry
        self._close_done = asyncio.Event()
        self.stats = NotifierStats()

    @property
    def pending(self) -> int:
        """Notices raised and not yet delivered or dropped."""
        return sum(len(tier) for tier in self._tiers)

    async def start(self) -> None:
        """Reload the outbox and resume its notices (with a store; once, before ``notify``).

        Raises the store's error when it cannot be read.
        """
        if self._started or self._closed:
            return
        assert self._outbox is not None and self._store is not None  # set together
        await self._outbox.start()
        rows = await self._store.list_notices(NoticeState.PENDING)
        self._started = True
        self._resume(rows)

    async def notify(
        self,
        target: WebhookTarget,
        event_type: int,
        *,
        cname: str,
        uid: str,
        sid: str,
        details: dict[str, Any],
    ) -> str:
        """Queue one notice for ``target`` and return its ``noticeId`` (a UUID hex).

        With a store, returns once the notice is in the outbox; delivery happens in the
        background. Raises ``ValueError`` for an unknown event type or details that are not
        JSON or too large, ``NotifierClosedError`` after ``aclose``, and ``NotifierStoreError``
        when the outbox could not store it.
        """
        if self._closed:
            raise NotifierClosedError("the notifier is closed")
        if not self._started:
            raise RuntimeError("Notifier.start() must be awaited before notify() with a store")
        event = NotificationEvent(event_type)
        details = {"msgName": MSG_NAMES[event], **details}
        while self._store is not None and sid not in self._sequences:
            try:
                await self._read_sequence(sid)  # a sid not seen lately: its counter is stored
            except Exception as exc:
                raise NotifierStoreError(f"could not read the sequence of sid {sid}") from exc
            if self._closed:
                raise NotifierClosedError("the notifier is closed")
        # from here to the outbox write nothing awaits: the sequence and the order of writes
        # (and of the lane) are the order of the calls
        # taken only once the notice is accepted, so a refused one leaves no gap in the sequence
        sequence = self._sequences.get(sid, -1) + 1
        payload = {
            "cname": cname,
            "uid": uid,
            "sid": sid,
            "sequence": sequence,
            "sendts": int(time.time() * 1000),
            "serviceType": SERVICE_TYPE_RECORDING,
            "details": details,
        }
        try:
            encoded = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"notice details are not JSON: {exc}") from None
        if len(encoded) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"notice payload is {len(encoded)} bytes, over {MAX_PAYLOAD_BYTES}")
        notice = _Notice(
            notice_id=uuid.uuid4().hex,
            target=target,
            event=event,
            sid=sid,
            sequence=sequence,
            payload=encoded,
            created=time.time(),
            tier=DROP_TIERS[event],
        )
        self._commit_sequence(sid, sequence)
        admitted = self.pending < self._max_queue or self._make_room(notice)
        if self._outbox is not None:
            # a notice the bound refused is stored too (given up), so its sequence stays taken
            row = notice.row() if admitted else notice.row(NoticeState.GIVEN_UP, "queue_full")
            notice.stored = self._outbox.add(row)
        if admitted:
            self._tiers[notice.tier][notice.notice_id] = notice
            self._enqueue(notice)
        if notice.stored is not None:
            try:
                await asyncio.shield(notice.stored)
            except Exception as exc:  # the lane skips it: it is not sent
                raise NotifierStoreError(f"could not store notice {notice.notice_id}") from exc
        return notice.notice_id

    async def join(self) -> None:
        """Wait until every notice raised so far has been delivered or dropped (and, with a
        store, until the outbox has recorded that)."""
        await self._idle.wait()
        if self._outbox is not None:
            await self._outbox.flush()

    async def aclose(self, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_S) -> None:
        """Refuse new notices, give pending ones ``drain_timeout`` seconds, then stop.

        With a store, a notice that would wait for a retry is not waited for, and what is
        still pending stays in the outbox for the next ``start``; without one it is dropped,
        logged and counted. Calling it again (or concurrently) waits for the first close and
        does nothing more.
        """
        if self._closed:
            await self._close_done.wait()
            return
        self._closed = True
        self._closing.set()
        try:
            tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
            left = 0
            if tasks:
                _, unfinished = await asyncio.wait(tasks, timeout=drain_timeout)
                # counted before cancelling: a cancelled lane forgets the notice it was sending
                left = self.pending
                for task in unfinished:
                    task.cancel()
                await asyncio.gather(*unfinished, return_exceptions=True)
            loading = list(self._loading.values())
            for task in loading:
                task.cancel()
            await asyncio.gather(*loading, return_exceptions=True)
            if self._outbox is not None:
                await self._outbox.aclose()  # every write made so far, before the store closes
                if left:
                    log.info("webhook notifier closed: %d notices stay in the outbox", left)
            elif left:
                self.stats.dropped_closed += left
                log.warning("webhook notifier closed with notices undelivered: dropped %d", left)
            for tier in self._tiers:
                tier.clear()
            self._lanes.clear()
            self._sequences.clear()
            self._idle.set()
        finally:
            self._close_done.set()

    def samples(self) -> list[Sample]:
        """The notifier's series for ``/metrics``."""
        s = self.stats
        return [
            ("reelhouse_webhooks_pending", "gauge", "Webhook notices waiting.", self.pending),
            ("reelhouse_webhooks_sent_total", "counter", "Webhook notices delivered.", s.sent),
            (
                "reelhouse_webhooks_failed_attempts_total",
                "counter",
                "Webhook POSTs that failed in a retryable way.",
                s.failed_attempts,
            ),
            (
                "reelhouse_webhooks_dropped_total",
                "counter",
                "Webhook notices dropped (queue full, refused, expired or at shutdown).",
                s.dropped,
            ),
            (
                "reelhouse_webhooks_outbox_writes_total",
                "counter",
                "Webhook outbox transactions written (each holds a batch of changes).",
                self._outbox.batches if self._outbox is not None else 0,
            ),
            (
                "reelhouse_webhooks_outbox_errors_total",
                "counter",
                "Webhook outbox transactions that failed.",
                self._outbox.errors if self._outbox is not None else 0,
            ),
        ]

    def _resume(self, rows: list[NoticeRow]) -> None:
        """Take the outbox's pending notices (oldest first) back into lanes, under the bound."""
        assert self._outbox is not None
        now = time.time()
        kept: list[_Notice] = []
        for row in rows:
            try:
                event = NotificationEvent(row.event_type)
                target = WebhookTarget(row.url, row.secret)
            except ValueError as exc:  # stored by another version, or edited by hand
                log.error("webhook outbox: notice %s cannot be sent: %s", row.notice_id, exc)
                self._outbox.given_up(row.notice_id, row.attempts, f"unreadable: {exc}")
                self.stats.dropped_expired += 1
                continue
            notice = _Notice(
                notice_id=row.notice_id,
                target=target,
                event=event,
                sid=row.sid,
                sequence=row.sequence,
                payload=row.payload,
                created=row.created_at.timestamp(),
                tier=DROP_TIERS[event],
                attempts=row.attempts,
            )
            if now - notice.created > self._max_age_s:
                self.stats.dropped_expired += 1
                self._give_up(notice, "expired while the server was down")
                continue
            if self.pending >= self._max_queue and not self._make_room(notice):
                self._give_up(notice, "queue_full")
                continue
            self._tiers[notice.tier][notice.notice_id] = notice
            kept.append(notice)
        for notice in sorted(kept, key=lambda n: (n.sid, n.sequence)):
            if not notice.dropped:
                self._enqueue(notice)
        self.stats.resumed += self.pending
        if kept:
            log.info(
                "webhook outbox: resuming %d notices of %d sids", self.pending, len(self._lanes)
            )

    def _enqueue(self, notice: _Notice) -> None:
        lane = self._lanes.get(notice.sid)
        if lane is None:
            lane = self._lanes[notice.sid] = _Lane(notice.sid)
            lane.task = asyncio.get_running_loop().create_task(
                self._run_lane(lane), name=f"webhook-lane:{notice.sid}"
            )
            self._idle.clear()
        lane.queue.append(notice)

    async def _read_sequence(self, sid: str) -> None:
        """Load ``sid``'s last stored sequence into the counters (one read however many ask)."""
        loading = self._loading.get(sid)
        if loading is None:
            loading = asyncio.get_running_loop().create_task(
                self._load_sequence(sid), name=f"webhook-sequence:{sid}"
            )
            self._loading[sid] = loading
            loading.add_done_callback(lambda task: self._loading.pop(sid, None))
            loading.add_done_callback(_consume)
        await asyncio.shield(loading)

    async def _load_sequence(self, sid: str) -> None:
        assert self._outbox is not None and self._store is not None
        await self._outbox.flush()  # a notice of this sid being written counts too
        last = await self._store.last_notice_sequence(sid)
        if sid not in self._sequences:
            self._commit_sequence(sid, -1 if last is None else last)

    def _commit_sequence(self, sid: str, sequence: int) -> None:
        self._sequences.pop(sid, None)
        self._sequences[sid] = sequence  # re-inserted last: the most recently used
        if len(self._sequences) > MAX_TRACKED_SIDS:
            self._sequences.popitem(last=False)

    def _make_room(self, new: _Notice) -> bool:
        """Drop one pending notice for ``new`` by the drop policy; False if ``new`` is the one
        to drop (it has been logged and counted)."""
        for tier in self._tiers[: new.tier + 1]:
            for victim in tier.values():
                if not victim.sending:
                    self._drop_pending(victim)
                    self._log_overflow(victim)
                    return True
        self.stats.dropped_overflow += 1
        self._log_overflow(new)
        return False

    def _drop_pending(self, notice: _Notice) -> None:
        del self._tiers[notice.tier][notice.notice_id]
        self.stats.dropped_overflow += 1
        notice.dropped = True
        self._give_up(notice, "queue_full")
        lane = self._lanes.get(notice.sid)
        if lane is not None and lane.current is not notice:
            lane.queue.remove(notice)
        # else waiting (on its write, a retry or a slot): the lane skips it after; or no lane
        # yet (``_resume``), which skips it when it makes them

    def _give_up(self, notice: _Notice, reason: str) -> None:
        if self._outbox is not None:
            self._outbox.given_up(notice.notice_id, notice.attempts, reason)

    def _log_overflow(self, notice: _Notice) -> None:
        # tier 2 only goes when everything pending is tier 2: loud, a receiver will miss files
        level = logging.ERROR if notice.tier == _TIER_COUNT - 1 else logging.WARNING
        log.log(
            level,
            "webhook queue full (%d): dropped notice",
            self._max_queue,
            extra=_fields(notice, reason="queue_full"),
        )

    async def _run_lane(self, lane: _Lane) -> None:
        """Deliver a sid's notices one at a time until its queue is empty."""
        try:
            while lane.queue:
                notice = lane.current = lane.queue.popleft()
                left_pending = False
                try:
                    if notice.stored is not None:
                        try:
                            await asyncio.shield(notice.stored)
                        except Exception:
                            continue  # not stored: ``notify`` raised it to its caller
                    left_pending = not await self._deliver(notice)
                    if left_pending:
                        break  # closing: it and the rest of the lane wait in the outbox
                except Exception:
                    # a bug, not the receiver: lose this notice, keep the lane going
                    log.exception("webhook delivery failed", extra=_fields(notice))
                    self.stats.dropped_expired += 1
                    self._give_up(notice, "internal error")
                finally:
                    lane.current = None
                    if not left_pending:
                        self._tiers[notice.tier].pop(notice.notice_id, None)
        finally:
            # nothing awaits between the empty-queue check and here, so no notice can have
            # joined this lane after its task stopped looking
            if self._lanes.get(lane.sid) is lane:
                del self._lanes[lane.sid]
            if not self._lanes:
                self._idle.set()

    async def _deliver(self, notice: _Notice) -> bool:
        """Try ``notice`` until it is accepted, refused, out of attempts or too old; False if
        it was left in the outbox instead because the notifier is closing (its lane stops)."""
        while True:
            if notice.dropped:
                return True
            async with self._slots:
                if notice.dropped:
                    return True
                notice.attempts += 1
                notice.sending = True
                try:
                    outcome, retry_after, why = await self._attempt(notice)
                finally:
                    notice.sending = False
            if outcome is _Outcome.SENT:
                self.stats.sent += 1
                if self._outbox is not None:
                    self._outbox.delivered(notice.notice_id)
                return True
            if outcome is _Outcome.REFUSED:
                self.stats.dropped_refused += 1
                self._give_up(notice, f"refused: {why}")
                log.warning(
                    "webhook receiver refused notice: dropped (%s)",
                    why,
                    extra=_fields(notice, reason="refused"),
                )
                return True
            self.stats.failed_attempts += 1
            delay = self._backoff(notice.attempts, retry_after)
            age_then = time.time() + delay - notice.created
            if notice.attempts >= self._attempts or age_then > self._max_age_s:
                self.stats.dropped_expired += 1
                self._give_up(notice, f"gave up after {notice.attempts} attempts: {why}")
                log.warning(
                    "webhook notice undeliverable after %d attempts: dropped (%s)",
                    notice.attempts,
                    why,
                    extra=_fields(notice, reason="gave_up"),
                )
                return True
            if self._outbox is not None:
                self._outbox.attempted(notice.notice_id, notice.attempts, why)
                if self._closing.is_set():
                    return False  # no retry waits at shutdown: the next start resumes it
            log.info(
                "webhook attempt %d failed (%s): retry in %.2f s",
                notice.attempts,
                why,
                delay,
                extra=_fields(notice),
            )
            if self._outbox is None:
                await asyncio.sleep(delay)  # in memory, a closing notifier drains what it can
            elif await _set_within(self._closing, delay):
                return False

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential from ``retry_base_s`` capped at ``retry_max_s``, with "equal jitter"
        (half fixed, half random) so many sids failing together do not retry together."""
        ceiling = min(self._retry_max_s, self._retry_base_s * 2 ** (attempt - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            # the receiver asked for a pause: honour it, but no longer than our own cap
            delay = max(delay, min(retry_after, self._retry_max_s))
        return delay

    async def _attempt(self, notice: _Notice) -> tuple[_Outcome, float | None, str]:
        """One POST: the outcome, any ``Retry-After`` seconds, and why it failed."""
        # notifyMs is when this attempt is sent (that API updates it on a resend), so the body,
        # and its signature, are made per attempt; the payload inside is fixed
        body = b'{"noticeId":"%s","productId":%d,"eventType":%d,"notifyMs":%d,"payload":%s}' % (
            notice.notice_id.encode(),
            PRODUCT_ID_CLOUD_RECORDING,
            notice.event,
            int(time.time() * 1000),
            notice.payload,
        )
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(notice.target.secret, body),
            NOTICE_ID_HEADER: notice.notice_id,
        }
        try:
            async with self._http.post(
                notice.target.url,
                data=body,
                headers=headers,
                timeout=self._timeout,
                # a redirect would resend the signed body to a URL the app never configured
                allow_redirects=False,
            ) as resp:
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except aiohttp.InvalidURL as exc:
            return _Outcome.REFUSED, None, f"invalid url: {exc}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _Outcome.RETRY, None, f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)
        if 200 <= status < 300:
            return _Outcome.SENT, None, ""
        if status == 429 or status >= 500:
            return _Outcome.RETRY, retry_after, f"HTTP {status}"
        return _Outcome.REFUSED, None, f"HTTP {status}"


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds; only the delta form (an HTTP date is ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None


def _fields(notice: _Notice, **more: str) -> dict[str, Any]:
    """The structured log fields of a notice."""
    return {
        "sid": notice.sid,
        "notice_id": notice.notice_id,
        "event_type": int(notice.event),
        "webhook_host": notice.target.host,
        **more,
    }


def _consume(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: every awaiter has been told, nothing to log at collection


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    """Whether ``event`` is set within ``seconds`` (at once if it already is)."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
