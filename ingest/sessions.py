"""Screen-recording sessions: the registry of open sessions, the events that drive them
and the recording apps connected to them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from storage.errors import MetaConflict
from storage.meta import FileRow, MetaStore, SessionEventRow, SessionRow
from storage.spool import Spool

from .config import IngestSettings, RecorderSettings
from .errors import (
    CloseCode,
    InvalidEvent,
    ProtocolError,
    SessionError,
    SessionExists,
    SessionNotFound,
    StorageBacklogFull,
    Unavailable,
    WritersUnavailable,
)
from .events import CONTROL_ACTION, OPEN_STATES, EventType, SessionEvent, SessionState, next_state
from .lanes import LaneError, LogSetup
from .recorder import SessionRecorder
from .writer import WriterLane, WriterPool, usable_cpus

log = logging.getLogger(__name__)

IDLE_CHECK_MAX_S = 60.0  # the idle reaper looks at least this often

PLATFORM_FIELDS = ("platform_call_id", "agent_platform_id", "user_id")


class Connection(Protocol):
    """A recording app's live connection, as the session registry sees it."""

    ids: dict[str, str]  # platform_call_id / agent_platform_id / user_id it announced
    session: LiveSession | None

    async def send_control(
        self, event_id: int, action: str, session_id: str, event: dict[str, str]
    ) -> None:
        """Push a control message."""
        ...

    async def send_ack(self, seq: int) -> None:
        """Tell the client every frame up to ``seq`` is safe."""
        ...

    async def close(self, code: CloseCode, reason: str) -> None:
        """Close the connection."""
        ...


@dataclass(eq=False)
class LiveSession:
    """An open session: its row, its recorder and the connection feeding it (if any)."""

    row: SessionRow
    recorder: SessionRecorder
    conn: Connection | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_activity: float = field(default_factory=time.monotonic)  # for the idle reaper
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def session_id(self) -> str:
        """The session's id."""
        return self.row.session_id


class NotIdle(Exception):
    """The idle reaper's END found the session active again once it held its lock."""


@dataclass(slots=True)
class SessionStats:
    """Counters for /metrics that outlive individual sessions."""

    started: int = 0
    ended: int = 0
    frames_in: int = 0
    bytes_in: int = 0
    segments: int = 0


def _ctx(live: LiveSession) -> dict[str, str]:
    return {"session_id": live.session_id}


def _check_writer(live: LiveSession) -> None:
    """A connection may not bind to a session whose writer lane is restarting (it replays the
    session shortly): 1011, and the client reconnects and resends."""
    if live.recorder.writer_lost:
        raise ProtocolError(
            CloseCode.INTERNAL_ERROR, "the session's writer is restarting: reconnect"
        )


def _pushed(event_type: EventType, row: SessionRow) -> SessionEvent:
    """An event as the recording app is told it: the session's id and the platform ids it
    started with (the app was paired by them), whatever the event's request carried."""
    return SessionEvent(
        event_type=event_type,
        session_id=row.session_id,
        platform_call_id=row.platform_call_id,
        agent_platform_id=row.agent_platform_id,
        user_id=row.user_id,
    )


def _matches(ids: dict[str, str], row: SessionRow) -> bool:
    given = {k: v for k, v in ids.items() if v}
    return bool(given) and all(getattr(row, k) == v for k, v in given.items())


class SessionManager:
    """Creates, drives, recovers and ends sessions; the one owner of their recorders."""

    def __init__(
        self,
        *,
        meta: MetaStore,
        spool: Spool,
        live_dir: Path,
        recorder: RecorderSettings,
        ingest: IngestSettings,
        wal_dir: Path,
        log_setup: LogSetup | None = None,
    ) -> None:
        self._meta = meta
        self._spool = spool
        self._live_dir = live_dir
        self._recorder_settings = recorder
        self._ingest = ingest
        self.pool = WriterPool(
            wal_dir,
            lanes=ingest.writer_lanes or usable_cpus(),
            lane_fill=ingest.lane_fill,
            failpoints=ingest.failpoints,
            tick_s=ingest.tick_s,
            rotate_bytes=ingest.wal_rotate_bytes,
            log_setup=log_setup,
        )
        self.pool.on_lane_died = self._recover_lane
        self.pool.before_release = meta.make_durable
        self.sessions: dict[str, LiveSession] = {}
        self._waiting: list[Connection] = []
        self.stats = SessionStats()
        self._closed = False
        self._reaper: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer lanes and recover the sessions that were open when the server last
        stopped, from the lanes' WALs."""
        records = await self.pool.start()
        for row in await self._meta.list_sessions(OPEN_STATES):
            recs = records.pop(row.session_id, [])
            try:
                await self._open(row, recs)
            except Exception:
                log.exception("could not recover session", extra={"session_id": row.session_id})
                await self._carry(row.session_id, recs)
            else:
                log.info("recovered open session", extra={"session_id": row.session_id})
        await self.pool.finish_recovery()
        self._reaper = asyncio.create_task(self._reap_idle(), name="idle-session-reaper")

    async def aclose(self) -> None:
        """Close every open segment so it is safe; sessions stay open for the next start."""
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for live in list(self.sessions.values()):
            if live.conn is not None:
                await live.conn.close(CloseCode.GOING_AWAY, "server shutting down")
            async with live.lock:  # an event in flight (an END finishing) completes first
                if self.sessions.pop(live.session_id, None) is not None:
                    await live.recorder.aclose()
                    self._collect(live.recorder)
        for conn in list(self._waiting):
            await conn.close(CloseCode.GOING_AWAY, "server shutting down")
        self.sessions.clear()
        await self.pool.aclose()
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def _open(
        self, row: SessionRow, records: list[list[Any]] | None = None, *, held: bool = False
    ) -> LiveSession:
        """Open the session's recorder and publish it; ``held``: with its lock taken (free:
        nobody knows it yet), for START to finish before any other event of it begins."""
        live = LiveSession(row=row, recorder=self._recorder(row))
        await self._start_recorder(live, records)
        if held:
            await live.lock.acquire()
        self.sessions[row.session_id] = live
        return live

    def _recorder(self, row: SessionRow) -> SessionRecorder:
        return SessionRecorder(
            row.session_id,
            live_dir=self._live_dir / row.session_id,
            key_prefix=f"{self._recorder_settings.key_prefix}/{row.customer_id}/{row.profile_id}/{row.session_id}",
            settings=self._recorder_settings,
            ingest=self._ingest,
            meta=self._meta,
            spool=self._spool,
            pool=self.pool,
            paused=row.state == SessionState.PAUSED,
            acked_seq=row.acked_seq,
        )

    async def _start_recorder(
        self,
        live: LiveSession,
        records: list[list[Any]] | None = None,
        recorder: SessionRecorder | None = None,
    ) -> None:
        recorder = recorder or live.recorder
        recorder.on_ack = lambda seq: self._ack(live, seq)
        recorder.on_error = lambda err: self._recorder_error(live, err)
        await recorder.start(records)

    async def _recover_lane(self, lane: WriterLane) -> None:
        """A writer lane's process died: restart it and reopen its sessions from its WAL, as a
        server start would. Their clients are closed (1011) and reconnect to find, in their
        welcome, the acknowledged sequence to resend from; nothing acknowledged is lost."""
        affected = [
            live
            for live in self.sessions.values()
            # (or placed on it by a restart that it died in, replaying the sessions)
            if live.recorder.lane is lane or self.pool.home_of(live.session_id) is lane
        ]
        log.critical(
            "writer lane %d died: restarting it and reopening %d sessions",
            lane.lane.number,
            len(affected),
        )
        for live in affected:
            if live.conn is not None:
                await self._recorder_error(
                    live, ProtocolError(CloseCode.INTERNAL_ERROR, "writer restarted: reconnect")
                )
                live.conn = None
            await live.recorder.abandon()
            self._collect(live.recorder)
        records = await self.pool.restart(lane)
        for live in affected:
            async with live.lock:  # an event in flight on the old recorder finishes first
                if self.sessions.get(live.session_id) is not live:
                    continue
                row = await self._meta.get_session(live.session_id)
                if row is None or row.state not in OPEN_STATES:
                    continue
                self.pool.place_on(live.session_id, lane)
                live.row, recorder = row, self._recorder(row)
                # a frame the lane died on twice is skipped (``WriterPool._recover``)
                recorder.skip = live.recorder.skip | lane.blamed(live.session_id)
                recs = records.pop(live.session_id, [])
                try:
                    # the old recorder (abandoned) stays until this one has replayed the WAL:
                    # a client binding meanwhile is told to reconnect (1011), so that its
                    # welcome carries the replayed acked_seq, not the metadata's older one
                    await self._start_recorder(live, recs, recorder)
                except Exception:
                    log.exception("could not reopen the session", extra=_ctx(live))
                    live.recorder = recorder
                    await recorder.abandon()  # failed: END answers UNAVAILABLE, not hangs
                    await self._carry(live.session_id, recs)
                else:
                    live.recorder = recorder
                    log.info("reopened after its lane restarted", extra=_ctx(live))
        await self.pool.finish_restart(lane)

    async def _carry(self, session_id: str, records: list[list[Any]]) -> None:
        """Keep the records of a session that could not be reopened for the next start."""
        try:
            await self.pool.carry(session_id, records)
        except Exception:  # (no lane runs to take them)
            log.exception("could not keep the WAL records", extra={"session_id": session_id})

    async def _reap_idle(self) -> None:
        """End sessions nobody has touched for ``idle_end_s``: no media, event or connection."""
        limit = self._ingest.idle_end_s
        while True:
            await asyncio.sleep(min(IDLE_CHECK_MAX_S, limit / 4))
            now = time.monotonic()
            for live in list(self.sessions.values()):
                if live.conn is None and now - live.last_activity > limit:
                    log.warning("ending idle session", extra={"session_id": live.session_id})
                    end = SessionEvent(event_type=EventType.END, session_id=live.session_id)
                    row = live.row
                    try:
                        await self.process_event(row.customer_id, row.profile_id, end, idle_s=limit)
                    except NotIdle:
                        log.info("idle end skipped: active again", extra=_ctx(live))
                    except SessionError as exc:  # ended meanwhile by a client
                        log.info("idle end skipped: %s", exc, extra={"session_id": live.session_id})
                    except Exception:  # the reaper must outlive one session's trouble
                        log.exception("idle end failed", extra={"session_id": live.session_id})

    async def wait_ended(self, session_id: str, timeout: float | None = None) -> None:
        """Wait until the session has ended (END event or idle end)."""
        live = self.sessions.get(session_id)
        if live is not None:
            await asyncio.wait_for(live.ended.wait(), timeout)

    async def _ack(self, live: LiveSession, seq: int) -> None:
        live.last_activity = time.monotonic()
        if live.conn is not None:
            await live.conn.send_ack(seq)

    async def _recorder_error(self, live: LiveSession, err: ProtocolError) -> None:
        # called from the writer's tick: a close handshake must not hold up other sessions
        if live.conn is not None:
            task = asyncio.create_task(live.conn.close(err.code, err.reason))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _collect(self, recorder: SessionRecorder) -> None:
        self.stats.frames_in += recorder.stats.frames_in
        self.stats.bytes_in += recorder.stats.bytes_in
        self.stats.segments += recorder.stats.segments

    # events ------------------------------------------------------------------------------

    async def process_event(
        self,
        customer_id: str,
        profile_id: str,
        event: SessionEvent,
        *,
        idle_s: float | None = None,
    ) -> tuple[SessionEvent, SessionRow]:
        """Carry out one event; returns the event (with its session id) and the session after it.
        With ``idle_s`` (the idle reaper's END), only if the session is still idle once its
        lock is held: otherwise ``NotIdle``."""
        if self._closed:
            raise Unavailable("the server is shutting down; send the event again later")
        if event.event_type is EventType.START:
            return await self._start(customer_id, profile_id, event)
        if not event.session_id:  # (PAUSE or RESUME naming its session by the platform's ids)
            event = replace(event, session_id=self._named(customer_id, profile_id, event))
        live = await self._live(customer_id, profile_id, event.session_id, event.event_type)
        async with live.lock:
            if self._closed:
                raise Unavailable("the server is shutting down; send the event again later")
            if live.session_id not in self.sessions:  # ended while we waited for the lock
                next_state(SessionState.ENDED, event.event_type)
            if idle_s is not None and (
                live.conn is not None or time.monotonic() - live.last_activity <= idle_s
            ):  # a client came back while the reaper waited for the lock
                raise NotIdle(live.session_id)
            before = SessionState(live.row.state)
            after = next_state(before, event.event_type)
            if live.recorder.writer_lost and event.event_type is not EventType.RECONNECT:
                # ending now would lose the open segment: it is only in the lane's WAL, which
                # the lane's restart (or the next server start) replays for open sessions
                raise WritersUnavailable(
                    "this session's writer crashed and is restarting; what it was acknowledged "
                    "is safe: send the event again shortly (if its writer keeps crashing, after "
                    "the server restarts)"
                )
            now = datetime.now(UTC)
            ev_row = await self._meta.add_event(live.session_id, event.event_type.value, now)
            await self._push(live, ev_row, event)
            if event.event_type is EventType.PAUSE:
                await live.recorder.pause()
            elif event.event_type is EventType.RESUME:
                await live.recorder.resume()
            elif event.event_type is EventType.END:
                try:
                    await live.recorder.finish()
                except LaneError as exc:  # the lane crashed while finishing: keep it open
                    raise WritersUnavailable(
                        "this session's writer crashed while ending; END again once the "
                        "server has restarted"
                    ) from exc
                except Exception:  # END always ends; the live folder stays for an operator
                    log.exception("finishing the recording failed", extra=_ctx(live))
                self._collect(live.recorder)
                self.stats.ended += 1
            changes: dict[str, Any] = {"state": after.value}
            if after is SessionState.ENDED:
                changes["ended_at"] = now
                changes["acked_seq"] = live.recorder.acked_seq
            live.row = await self._meta.update_session(live.session_id, **changes)
            live.last_activity = time.monotonic()
            if after is SessionState.ENDED:
                self.sessions.pop(live.session_id, None)
                live.ended.set()
                if live.conn is not None:
                    await live.conn.close(CloseCode.NORMAL, "session ended")
                    live.conn = None
            log.info(
                "%s: %s → %s",
                event.event_type.value,
                before.value,
                after.value,
                extra={"session_id": live.session_id},
            )
            return event, live.row

    async def _start(
        self, customer_id: str, profile_id: str, event: SessionEvent
    ) -> tuple[SessionEvent, SessionRow]:
        session_id = event.session_id or str(uuid.uuid4())
        if self._spool.full:
            # the sessions already recording keep their frames (the WAL holds them until the
            # spool has room); a new one would only add to what is waiting
            raise StorageBacklogFull(
                "the upload backlog is full (the object store is down or slow); "
                "START again once it drains"
            )
        if not self.pool.alive:
            raise WritersUnavailable(
                "no writer lane is running (they crashed: see the server log); restart the server"
            )
        if session_id in self.sessions or await self._meta.get_session(session_id) is not None:
            raise SessionExists(f"session {session_id} already exists")
        now = datetime.now(UTC)
        row = SessionRow(
            session_id=session_id,
            customer_id=customer_id,
            profile_id=profile_id,
            platform_call_id=event.platform_call_id,
            agent_platform_id=event.agent_platform_id,
            user_id=event.user_id,
            state=next_state(None, EventType.START).value,
            created_at=now,
            updated_at=now,
        )
        try:
            await self._meta.create_session(row)
        except MetaConflict:  # a concurrent START with the same id won
            raise SessionExists(f"session {session_id} already exists") from None
        # its frames are acknowledged once in the writer's WAL, and a start drops the WAL of a
        # session it does not know: the row must outlive a power cut first
        await self._meta.make_durable()
        try:
            live = await self._open(row, held=True)
        except LaneError as exc:  # its lane crashed just now: the session never started
            ended = SessionState.ENDED.value
            await self._meta.update_session(session_id, state=ended, ended_at=now)
            raise WritersUnavailable(
                f"the writer lane crashed ({exc}); START again, or restart the server"
            ) from exc
        try:  # (a PAUSE or END of it waits: the app hears "start" first)
            self.stats.started += 1
            event = SessionEvent(
                event_type=event.event_type,
                session_id=session_id,
                platform_call_id=event.platform_call_id,
                agent_platform_id=event.agent_platform_id,
                user_id=event.user_id,
            )
            ev_row = await self._meta.add_event(session_id, event.event_type.value, now)
            waiting = [c for c in reversed(self._waiting) if _matches(c.ids, row)]
            if waiting:
                conn = waiting[0]  # the most recent connection of that app
                self._waiting.remove(conn)
                self._bind(live, conn)
            await self._push(live, ev_row, event)
        finally:
            live.lock.release()
        log.info("EVENT_TYPE_START: new session", extra={"session_id": session_id})
        return event, row

    def _named(self, customer_id: str, profile_id: str, event: SessionEvent) -> str:
        """The one open session of the profile whose platform ids are those the event gives."""
        ids = {k: getattr(event, k) for k in PLATFORM_FIELDS}
        found = [
            sid
            for sid, live in self.sessions.items()
            if (live.row.customer_id, live.row.profile_id) == (customer_id, profile_id)
            and _matches(ids, live.row)
        ]
        given = ", ".join(f"{k}={v!r}" for k, v in event.to_json().items() if k != "eventType")
        if not found:
            raise SessionNotFound(f"no open session of this profile has {given}")
        if len(found) > 1:
            raise InvalidEvent(
                f"{len(found)} open sessions of this profile have {given}: give the sessionId"
            )
        return found[0]

    async def _live(
        self, customer_id: str, profile_id: str, session_id: str, event_type: EventType
    ) -> LiveSession:
        live = self.sessions.get(session_id)
        if live is not None and (live.row.customer_id, live.row.profile_id) == (
            customer_id,
            profile_id,
        ):
            return live
        row = await self._meta.get_session(session_id)
        if row is None or (row.customer_id, row.profile_id) != (customer_id, profile_id):
            raise SessionNotFound(f"session {session_id} not found")
        if row.state == SessionState.ENDED:
            next_state(SessionState.ENDED, event_type)  # raises: nothing follows an END
        # open in the store but not loaded here (its recovery failed: see the log)
        raise Unavailable(f"session {session_id} is not loaded on this server; try again later")

    async def _push(self, live: LiveSession, ev_row: SessionEventRow, event: SessionEvent) -> None:
        action = CONTROL_ACTION.get(event.event_type, "reconnect")
        if live.conn is not None:
            body = _pushed(event.event_type, live.row).to_json()
            await live.conn.send_control(ev_row.event_id, action, live.session_id, body)

    # queries -----------------------------------------------------------------------------

    async def get(
        self, customer_id: str, profile_id: str, session_id: str
    ) -> tuple[SessionRow, list[SessionEventRow], list[FileRow]]:
        """A session of this profile with its events and files; ``SessionNotFound`` otherwise."""
        row = await self._meta.get_session(session_id)
        if row is None or (row.customer_id, row.profile_id) != (customer_id, profile_id):
            raise SessionNotFound(f"session {session_id} not found")
        events = await self._meta.list_events(session_id)
        files = await self._meta.list_files(session_id)
        return row, events, files

    # connections -------------------------------------------------------------------------

    async def attach(self, conn: Connection, session_id: str | None) -> LiveSession | None:
        """Bind a connection to its session (returned), or park it until a matching START."""
        if self._closed:
            raise ProtocolError(CloseCode.GOING_AWAY, "server shutting down")
        if session_id:
            live = self.sessions.get(session_id)
            if live is None:
                row = await self._meta.get_session(session_id)
                if row is None:
                    raise ProtocolError(
                        CloseCode.UNKNOWN_SESSION, f"session {session_id} not found"
                    )
                raise ProtocolError(CloseCode.SESSION_STATE, f"session {session_id} has ended")
            _check_writer(live)
            await self._replace(live, conn)
            return live
        if not any(conn.ids.values()):
            raise ProtocolError(CloseCode.SCHEMA, "hello: give session_id or platform ids")
        for live in self.sessions.values():
            if live.conn is None and _matches(conn.ids, live.row):
                _check_writer(live)
                await self._replace(live, conn)
                return live
        self._waiting.append(conn)
        return None

    async def _replace(self, live: LiveSession, conn: Connection) -> None:
        old = live.conn
        self._bind(live, conn)
        if old is not None and old is not conn:
            old.session = None
            await old.close(CloseCode.REPLACED, "replaced by a newer connection")

    def _bind(self, live: LiveSession, conn: Connection) -> None:
        live.last_activity = time.monotonic()
        live.conn = conn
        conn.session = live

    async def pending_controls(self, live: LiveSession) -> list[tuple[int, str, dict[str, str]]]:
        """Events of the session the app has not acked yet, to push after (re)connecting."""
        out = []
        for ev in await self._meta.list_events(live.session_id):
            if ev.acked_at is None:
                event_type = EventType(ev.event_type)
                body = _pushed(event_type, live.row).to_json()
                out.append((ev.event_id, CONTROL_ACTION.get(event_type, "reconnect"), body))
        return out

    def detach(self, conn: Connection) -> None:
        """Forget a closed connection."""
        if conn in self._waiting:
            self._waiting.remove(conn)
        live = conn.session
        if live is not None and live.conn is conn:
            live.conn = None
            live.last_activity = time.monotonic()
        conn.session = None

    async def control_acked(self, conn: Connection, event_id: int) -> bool:
        """Record the app's ack of a control message; false when the id is not its session's."""
        live = conn.session
        if live is None:
            return False
        events = await self._meta.list_events(live.session_id)
        if not any(ev.event_id == event_id for ev in events):
            return False
        await self._meta.ack_event(event_id, datetime.now(UTC))
        return True
