"""The writer pool: every open session's queued frames are written in ticks, in writer lanes
(``ingest.lanes``: one child process each). Each session is placed on one lane for as long as
it is open; a lane's tick takes what its sessions queued, ships it to the lane process, which
appends it to its WAL, fsyncs once and answers (and writes the frames into HLS a little later);
the pool then hands each session its outcome (acknowledge, spool closed segments). Lanes tick
side by side. Per-frame cost on the event loop is a list append; per tick, one round trip and
one fsync per lane."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from .lanes import WRITE_DELAY_S, Lane, LaneDied, LaneError, LogSetup, read_mark
from .session_writer import Failed, Outcome
from .wal import Wal

log = logging.getLogger(__name__)

Observe = Callable[[float, str], None]  # (seconds, phase): the pool's timings, for /metrics

DEFAULT_TICK_S = 0.025  # the shortest tick: bounds fsyncs per second; acks wait at most this
RESTART_QUIET_S = 30.0  # a lane dying again sooner after its restart is left down a while:
DOWN_RETRY_S = 60.0  # then tried again, waiting twice as long after each crash loop
DOWN_RETRY_MAX_S = 15 * 60.0
LANE_DIR = "lane-{}"
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max ..."


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may use: its affinity mask (a cpuset), capped by its cgroup's CPU
    quota (``docker run --cpus``, a Kubernetes limit). ``os.cpu_count`` counts the host's:
    a 2-CPU container on a 64-core node would start 64 lanes of ~60 MB each."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # (not Linux)
        cpus = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no cgroup v2 file, or one that does not parse
        pass
    return max(1, cpus)


# a lane that said it holds frames not yet written (or news of them) is asked for its news
# this long after its last tick, when no tick came meanwhile
COLLECT_S = 2 * WRITE_DELAY_S


class Writable(Protocol):
    """What the pool needs of a recorder."""

    session_id: str
    wal_from: int  # the oldest file of its lane's WAL this session still needs

    def refresh_wal(self) -> None:
        """The lane's WAL moved to a new file: re-anchor if nothing older is needed."""
        ...

    def take(self) -> list[tuple[Any, ...]]:
        """Hand over the queued items."""
        ...

    async def written(self, outcome: Any) -> None:
        """Acknowledge what the tick made durable."""
        ...


class WriterLane:
    """One lane process and the sessions placed on it, ticking on its own: lanes run side by
    side, so one lane's loop-side work (acks, spooling) overlaps another's writing."""

    def __init__(self, pool: WriterPool, lane: Lane) -> None:
        self.pool = pool
        self.adopt(lane)
        self.members: set[Writable] = set()
        self.ready: dict[Writable, None] = {}
        self.wake = asyncio.Event()
        self.wal_index = 0  # the lane's current WAL file, as of its last answer
        self._seen_index = 0
        self._released_below = 0
        self._release_task: asyncio.Task[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.restarted_at: float | None = None  # monotonic time of the last restart
        # the frame (session id, sequence) the process was writing when it last died, and
        # those it died on twice: the restarts skip them
        self.suspect: tuple[str, int] | None = None
        self.culprits: set[tuple[str, int]] = set()
        self.pending = False  # the process holds frames not yet written, or their news
        # sessions that could not be reopened: the WAL file their records were carried to,
        # kept (and every later one) until a restart recovers them
        self.pins: dict[str, int] = {}
        # clear while a restart replays the lane's sessions: its new WAL file is dropped should
        # the replay be cut short (``ingest.wal``), so no tick may log, and acknowledge, frames
        # in it until the replay is done (the frames wait in their recorders)
        self.replayed = asyncio.Event()
        self.replayed.set()

    def adopt(self, lane: Lane) -> None:
        """Take ``lane`` as this lane's process (at start, and after a restart): its exit,
        unasked, has it restarted."""
        self.lane = lane
        lane.on_exit = lambda: self.pool.lane_died(self)

    async def call(self, op: str, *args: Any) -> Any:
        """A request to the lane process (see ``ingest.lanes``)."""
        return await self.lane.call(op, *args)

    def blamed(self, session_id: str) -> set[int]:
        """The frames of ``session_id`` the lane died on twice (skipped when replayed)."""
        return {seq for sid, seq in self.culprits if sid == session_id}

    def start_ticking(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name=f"writer-lane-{self.lane.number}")

    async def _tick(
        self, loop: asyncio.AbstractEventLoop, work: list[tuple[Writable, Any]]
    ) -> None:
        """One tick of ``work``."""
        pool = self.pool
        pool.ticks += 1
        began = loop.time()
        news: list[tuple[str, Outcome | Failed]] = []
        try:
            outcomes, news, sync_s, self.wal_index, self.pending = await self.call(
                "tick", [(rec.session_id, items) for rec, items in work]
            )
        except LaneError as exc:
            log.critical(
                "writer lane %d failed a tick (%s): sessions %s stop until it restarts; what "
                "they were acknowledged is in its WAL, which the restart replays",
                self.lane.number,
                exc,
                ", ".join(sorted(rec.session_id for rec in self.members)),
            )
            outcomes, sync_s = [Failed(str(exc))] * len(work), 0.0
        if pool.observe is not None:
            pool.observe(loop.time() - began, "write")
            pool.observe(sync_s, "sync")
        for (rec, _), outcome in zip(work, outcomes, strict=True):
            await rec.written(outcome)
        await self._hand_out(news)
        await self.release()

    async def _collect(self) -> None:
        """No tick came since the lane said it holds frames not yet written: have it write
        them, and hand out what came of it."""
        self.pending = False
        try:
            news, self.wal_index = await self.call("flush")
        except LaneError as exc:  # (its sessions hear of it from their next tick)
            log.error("writer lane %d: flush failed: %s", self.lane.number, exc)
            return
        await self._hand_out(news)
        await self.release()

    async def _hand_out(self, news: list[tuple[str, Outcome | Failed]]) -> None:
        """Give sessions the segments their frames closed, or the errors they met, after
        their tick (written later than logged: ``ingest.lanes``)."""
        if news:
            by_id = {rec.session_id: rec for rec in self.members}
            for sid, outcome in news:
                if (rec := by_id.get(sid)) is not None:
                    await rec.written(outcome)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        pool = self.pool
        while True:
            quiet = False
            if self.pending:
                try:
                    await asyncio.wait_for(self.wake.wait(), COLLECT_S)
                except TimeoutError:
                    quiet = True
            else:
                await self.wake.wait()
            self.wake.clear()
            if not self.replayed.is_set():
                await self.replayed.wait()
            started = loop.time()
            ready, self.ready = self.ready, {}
            work = [(rec, items) for rec in ready if (items := rec.take())]
            try:
                if not work:
                    if quiet:
                        await self._collect()
                    continue
                await self._tick(loop, work)
            except Exception:
                # a bug on our side: what this tick took may not be written, and a later
                # tick's cumulative ack would cover it; restart the lane instead, as if it
                # had crashed: its sessions replay the WAL, their clients resend the rest
                log.exception("writer lane %d tick failed: restarting the lane", self.lane.number)
                self.lane.kill()
            if pool.observe is not None:
                pool.observe(loop.time() - started, "tick")
            rest = pool.tick_s - (loop.time() - started)
            if rest > 0:
                await asyncio.sleep(rest)  # group more frames per fsync

    async def release(self) -> None:
        """Delete WAL files no session of this lane needs any more."""
        if self.wal_index != self._seen_index:  # rotated: idle sessions may let go of old files
            self._seen_index = self.wal_index
            for rec in list(self.members):
                rec.refresh_wal()
        needed = [rec.wal_from for rec in self.members] + list(self.pins.values())
        oldest = min(needed, default=self.wal_index)
        if oldest > self._released_below:
            released_below, self._released_below = self._released_below, oldest
            try:
                if self.pool.before_release is not None:  # the rows that say what went into
                    await self.pool.before_release()  # segments outlive the frames they let go
            except Exception:  # (the metadata's disk): keep the files, try again later
                log.exception("writer lane %d: metadata not durable, WAL kept", self.lane.number)
                self._released_below = released_below
                return
            try:
                await self.call("release", oldest)
            except LaneError as exc:
                log.error("writer lane %d: WAL release failed: %s", self.lane.number, exc)
                return
            self.pool.note_released()

    def release_soon(self) -> None:
        if self._release_task is None or self._release_task.done():
            self._release_task = asyncio.create_task(self.release(), name="wal-release")

    async def aclose(self) -> None:
        if self._release_task is not None:
            with contextlib.suppress(Exception):
                await self._release_task
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.lane.stop()


class WriterPool:
    """Places recorders on ``lanes`` writer processes and schedules their writes in ticks."""

    def __init__(
        self,
        wal_dir: Path,
        *,
        lanes: int,
        lane_fill: int = 1,
        tick_s: float = DEFAULT_TICK_S,
        rotate_bytes: int = 64 * 1024 * 1024,
        log_setup: LogSetup | None = None,
        failpoints: bool = False,
    ) -> None:
        self.wal_dir = wal_dir
        self._failpoints = failpoints
        self.tick_s = tick_s
        self._rotate_bytes = rotate_bytes
        self._log_setup = log_setup
        self._lane_count = max(1, lanes)
        self._lane_fill = max(1, lane_fill)
        self.lanes: list[WriterLane] = []
        self._lane_of: dict[Writable, WriterLane] = {}
        self._home: dict[str, WriterLane] = {}  # recovered sessions → the lane holding their WAL
        self._orphans: list[Wal] = []  # WAL directories no lane owns now (fewer lanes, old layout)
        self._released = asyncio.Event()
        self.ticks = 0
        # called with (seconds, phase): "write" (the lane's round trip), "sync" (its fsync),
        # "tick" (all of it) and "ack" (from a batch's oldest frame to its acknowledgement)
        self.observe: Observe | None = None
        # told when a lane's process died; it restarts the lane and reopens its sessions
        self.on_lane_died: Callable[[WriterLane], Awaitable[None]] | None = None
        # awaited before a lane deletes WAL files (the metadata made durable)
        self.before_release: Callable[[], Awaitable[None]] | None = None
        self._recoveries: dict[WriterLane, asyncio.Task[None]] = {}
        self._recovered = asyncio.Event()
        self.restarts = 0

    async def start(self) -> dict[str, list[list[Any]]]:
        """Start the lanes and read what their WALs hold, by session (for recovery)."""
        await asyncio.to_thread(self.wal_dir.mkdir, parents=True, exist_ok=True)
        lanes = [
            self._new_lane(i, self.wal_dir / LANE_DIR.format(i)) for i in range(self._lane_count)
        ]
        await asyncio.gather(*(lane.start() for lane in lanes))
        self.lanes = [WriterLane(self, lane) for lane in lanes]
        records: dict[str, list[list[Any]]] = {}
        for orphan in await asyncio.to_thread(self._orphan_dirs):
            wal = Wal(orphan)
            for sid, recs in (await asyncio.to_thread(wal.open)).items():
                records.setdefault(sid, []).extend(recs)
            self._orphans.append(wal)
        for writer_lane in self.lanes:
            for sid, recs in (await writer_lane.call("wal_open")).items():
                records.setdefault(sid, []).extend(recs)
                self._home[sid] = writer_lane
        return records

    def _orphan_dirs(self) -> list[Path]:
        """WAL directories of lanes that no longer exist, and the single WAL of old versions."""
        owned = {LANE_DIR.format(i) for i in range(self._lane_count)}
        dirs = [p for p in self.wal_dir.glob(LANE_DIR.format("*")) if p.name not in owned]
        if any(self.wal_dir.glob("wal-*.bin")):
            dirs.append(self.wal_dir)
        return sorted(dirs)

    async def finish_recovery(self) -> None:
        """Every recovered session is written again in its lane's WAL: drop the old files."""
        for writer_lane in self.lanes:
            await self.finish_restart(writer_lane)
        for wal in self._orphans:
            await asyncio.to_thread(_drop_orphan, wal)
        self._orphans = []
        for writer_lane in self.lanes:
            writer_lane.start_ticking()

    @property
    def alive(self) -> int:
        """Lanes whose process is running."""
        return sum(not lane.lane.dead for lane in self.lanes)

    def register(self, rec: Writable) -> WriterLane:
        """Place a recorder on a lane: the one holding its WAL; else the fullest running lane
        that holds fewer than ``lane_fill`` sessions (few sessions share one lane's ticks);
        else the least busy running one (``LaneDied`` when none runs)."""
        lane = self._home.get(rec.session_id)
        if lane is None:
            running = [w for w in self.lanes if not w.lane.dead]
            if not running:
                raise LaneDied("no writer lane is running")
            filling = [w for w in running if len(w.members) < self._lane_fill]
            if filling:  # (max and min keep the first of equals: the lowest lane number)
                lane = max(filling, key=lambda w: len(w.members))
            else:
                lane = min(running, key=lambda w: len(w.members))
        lane.members.add(rec)
        self._lane_of[rec] = lane
        return lane

    def unregister(self, rec: Writable) -> None:
        """Forget a recorder (ended or closed)."""
        lane = self._lane_of.pop(rec, None)
        if lane is not None:
            lane.members.discard(rec)
            lane.ready.pop(rec, None)

    def schedule(self, rec: Writable) -> None:
        """A recorder has items queued: write them in its lane's next tick."""
        lane = self._lane_of.get(rec)
        if lane is not None:
            lane.ready[rec] = None
            lane.wake.set()

    def release_soon(self, rec: Writable) -> None:
        """A session let go of old WAL files outside a tick (its segment reached the spool)."""
        lane = self._lane_of.get(rec)
        if lane is not None:
            lane.release_soon()

    def note_released(self) -> None:
        self._released.set()
        self._released = asyncio.Event()

    async def wait_released(self) -> None:
        """Wait until the next time old WAL files are deleted."""
        await self._released.wait()

    @property
    def wal_index(self) -> int:
        """The newest WAL file of any lane."""
        return max((lane.wal_index for lane in self.lanes), default=0)

    def _new_lane(self, number: int, directory: Path) -> Lane:
        return Lane(number, directory, self._rotate_bytes, self._log_setup, self._failpoints)

    def lane_died(self, lane: WriterLane) -> None:
        """A lane's process is gone: have it restarted (once at a time; see ``_recover``)."""
        if self.on_lane_died is None or lane in self._recoveries or lane not in self.lanes:
            return
        task = asyncio.create_task(self._recover(lane), name=f"lane-{lane.lane.number}-restart")
        self._recoveries[lane] = task

    async def _recover(self, lane: WriterLane) -> None:
        """Restart a dead lane (again, if it dies while its sessions are replayed). One that
        died within ``RESTART_QUIET_S`` of its last restart with no frame to blame (a crash
        loop) is left down for ``DOWN_RETRY_S``, doubling with each loop, then restarted: its
        sessions come back without a server restart once the cause is gone (a full disk).
        A frame the lane died writing twice (``read_mark``: writing it, then replaying it) is
        to blame: the restart skips it, and the lane goes on."""
        assert self.on_lane_died is not None
        loops = 0
        try:
            while True:
                await lane.lane.settled()
                suspect = await asyncio.to_thread(read_mark, lane.lane.directory)
                culprit = suspect is not None and suspect == lane.suspect
                lane.suspect = suspect
                now = time.monotonic()
                quiet = lane.restarted_at is None or now - lane.restarted_at >= RESTART_QUIET_S
                if not quiet and not culprit:
                    delay = min(DOWN_RETRY_MAX_S, DOWN_RETRY_S * 2**loops)
                    loops += 1
                    log.critical(
                        "writer lane %d died again %.0f s after its restart: left down for "
                        "%.0f s; its sessions wait",
                        lane.lane.number,
                        now - (lane.restarted_at or now),
                        delay,
                    )
                    lane.replayed.set()  # its ticks fail meanwhile (clients told), not wait
                    await asyncio.sleep(delay)
                    # then a restart as after a first crash (nothing blamed for the wait)
                    lane.restarted_at = lane.suspect = None
                    continue
                if culprit:
                    assert suspect is not None
                    lane.culprits.add(suspect)
                    log.critical(
                        "writer lane %d died twice writing session %s's frame %d: the frame "
                        "is dropped, the lane restarts",
                        lane.lane.number,
                        *suspect,
                    )
                elif suspect is not None:
                    log.critical(
                        "writer lane %d died writing session %s's frame %d: restarting; "
                        "should it die on that frame again, the frame is dropped",
                        lane.lane.number,
                        *suspect,
                    )
                try:
                    await self.on_lane_died(lane)
                except Exception:
                    log.exception("restarting writer lane %d failed", lane.lane.number)
                if not lane.lane.dead:
                    return
        finally:
            lane.replayed.set()  # (a restart that failed or gave up: ticks fail, not wait)
            del self._recoveries[lane]
            self._recovered.set()
            self._recovered = asyncio.Event()

    async def wait_recovered(self) -> None:
        """Wait until the next lane restart has finished (or failed)."""
        await self._recovered.wait()

    async def restart(self, lane: WriterLane) -> dict[str, list[list[Any]]]:
        """Start a new process for ``lane`` on the same WAL; returns what the WAL holds by
        session (replay each with ``register`` after ``place_on``, then ``finish_restart``)."""
        lane.replayed.clear()
        old = lane.lane
        await old.stop()
        lane.adopt(self._new_lane(old.number, old.directory))
        await lane.lane.start()
        lane.restarted_at = time.monotonic()
        self.restarts += 1
        records: dict[str, list[list[Any]]] = await lane.call("wal_open")
        return records

    async def carry(self, session_id: str, records: list[list[Any]]) -> None:
        """A session that could not be reopened: append its records, as read, to the WAL of
        the lane they came from (else the first running one) before the old files go, and
        keep that file until a restart, which replays them again. Nothing acknowledged is
        dropped for a failure to replay it."""
        if not records:
            return
        lane = self._home.get(session_id) or next((w for w in self.lanes if not w.lane.dead), None)
        if lane is None:
            raise LaneDied("no writer lane is running")
        lane.pins[session_id] = await lane.call("carry", records)
        log.critical(
            "session %s could not be reopened: its %d WAL records are kept in writer lane %d's "
            "WAL (from file %d on, which stays until a restart recovers the session)",
            session_id, len(records), lane.lane.number, lane.pins[session_id],
        )  # fmt: skip

    def home_of(self, session_id: str) -> WriterLane | None:
        """The lane a session is to be replayed on (its WAL is there), if it is waiting to be."""
        return self._home.get(session_id)

    def place_on(self, session_id: str, lane: WriterLane) -> None:
        """The next ``register`` of ``session_id`` goes to ``lane`` (its WAL is there)."""
        self._home[session_id] = lane

    async def finish_restart(self, lane: WriterLane) -> None:
        """The (re)started lane's sessions are replayed: drop the WAL files they came from."""
        lane.wal_index = await lane.call("finish_recovery")
        self._home = {sid: w for sid, w in self._home.items() if w is not lane}
        lane.replayed.set()

    async def aclose(self) -> None:
        """Stop ticking and stop the lanes (each syncs and closes its WAL); harmless twice."""
        for task in list(self._recoveries.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lanes, self.lanes = self.lanes, []
        await asyncio.gather(*(lane.aclose() for lane in lanes))
        for wal in self._orphans:  # a start that failed half-way: leave them for the next
            await asyncio.to_thread(wal.close)
        self._orphans = []


def _drop_orphan(wal: Wal) -> None:
    wal.close()
    for path in wal.directory.glob("wal-*.bin"):
        path.unlink(missing_ok=True)
    if wal.directory.name.startswith(LANE_DIR.format("")):
        shutil.rmtree(wal.directory, ignore_errors=True)
