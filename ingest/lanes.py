"""Writer lanes: child processes that write the sessions' frames, one per core by default.

Why processes: writing (Opus → AAC, TS muxing, WAL appends) is most of a session's CPU, and
in threads beside the event loop much of it held the GIL: the loop and the writer threads
handed the GIL back and forth (futex calls were ~14 % of the server's CPU with 40 sessions),
writer ticks stretched to ten times their median, and every Python part of the server shared
one core. A lane process has its own interpreter: the event loop only moves bytes, and each
lane writes its share of the sessions on a core of its own.

A lane owns its WAL directory (``wal/lane-<n>``, group-committed once per tick) and the
``SessionWriter`` of each session placed on it. The server talks to it over a pipe (a Unix
socket pair), requests answered one at a time, in order (``Lane.call``): ``open``, ``tick``,
``flush``, ``finish``, ``close``, ``release``, ``wal_open``, ``carry``, ``finish_recovery``,
``stop``.

A tick only logs: its frames are appended to the WAL, fsync'd and acknowledged at once, and
written into HLS when the lane has nothing to answer and the oldest of them has waited
``WRITE_DELAY_S`` (a few ticks' frames at a time: the codecs and muxers run with warm caches,
and an acknowledgement never waits for a codec). A tick writes first when its lane's backlog
has grown past ``BACKLOG_MAX_S`` or ``BACKLOG_MAX_BYTES`` (the lane cannot keep up: the
acknowledgements slow down instead of memory growing). What a written batch produces (closed
segments, a frame that did not decode) rides on the next reply (``Outcome``; ``flush`` when no
tick comes). The server's
end is a protocol on the event loop: a tick's request is a pickle of byte strings (a copy),
and handing it to a thread cost more than the copy (a thread wake-up and a GIL hand-over each
way, per tick and lane). Only a large reply (a WAL's records at recovery) is unpickled in a
thread.

A lane ignores SIGINT (Ctrl-C reaches the whole process group; the server decides when a lane
stops, after its sessions made their open segments safe) and exits when the server's end of
the pipe closes, so a killed server leaves no lane behind. A lane that dies (a crash in a
codec) fails its sessions' writes and is noticed at once (the event loop watches its exit);
the pool restarts it on the same WAL and the session manager replays its sessions, as at a
server start (``WriterPool.lane_died``, ``SessionManager._recover_lane``). Before writing each
frame into HLS a lane notes which (``MARK_FILE``, a shared memory page that outlives the
process): a lane that dies twice on the same frame (writing it, then replaying it) has it
skipped by the next restart, acknowledged and not recorded, and goes on (a `webm` chunk
leaves a hole in its stream, which the demuxer reads past, as libavformat resyncs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .session_writer import Failed, Outcome, SessionWriter, WriterParams
from .wal import Wal

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0
# plain pickle rather than Connection.send's ForkingPickler (built per message, for the fds
# and sockets we never send); protocol 5 copies a frame's bytes in one piece
PICKLE_PROTOCOL = 5
# Started once per server process and forked from for every lane: a lane starts in tens of
# milliseconds with the media libraries already imported, and never inherits the server's
# threads or event loop (forking those is unsafe).
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["ingest.lanes"])

LogSetup = tuple[Callable[..., None], tuple[Any, ...]]  # a module-level function and its args
_START_LOCK = threading.Lock()
# A failpoint, for tests of what a crashing codec does (``[ingest] failpoints``, off by
# default): a lane started with failpoints exits at once, as a crash would, when it is given a
# media frame whose payload starts with these bytes.
FAILPOINT_CRASH = b"\xffreelhouse-failpoint:crash\xff"
FAILPOINT_EXIT_CODE = 70
_SIZE = struct.Struct("!i")  # ``multiprocessing.Connection``'s framing
_BIG_SIZE = struct.Struct("!Q")
# a reply larger than this is unpickled in a thread (the WAL's records at recovery, say), and
# a request this large is written without a copy joining it to its header
_INLINE_BYTES = 1 << 20
# logged frames are written into HLS once the oldest has waited this long (or at once when a
# control item, END or a flush needs them); a tick writes first past either bound
WRITE_DELAY_S = 0.1
BACKLOG_MAX_S = 1.0
BACKLOG_MAX_BYTES = 32 * 1024 * 1024
MARK_FILE = "writing"  # in the lane's WAL directory: the frame being written, if one is
_MARK = struct.Struct("!QH")  # sequence (0: none), then the session id's length and bytes
_MARK_BYTES = 4096


class LaneError(RuntimeError):
    """A lane refused a request (the message says why) or is gone."""


class LaneDied(LaneError):
    """The lane process exited; its sessions wait for its restart."""


# the lane process ----------------------------------------------------------------------------


class _Marker:
    """The frame a lane is writing into HLS, noted in ``MARK_FILE`` (a shared mapping: what is
    noted survives the process) for the server to read when the lane dies (``read_mark``)."""

    def __init__(self, directory: Path, failpoints: bool) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / MARK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, _MARK_BYTES)
            self._map = mmap.mmap(fd, _MARK_BYTES)
        finally:
            os.close(fd)
        self._failpoints = failpoints
        self.clear()

    def __call__(self, sid: str, seq: int, data: bytes) -> None:
        _SessionOfRecords.current = sid
        raw = sid.encode()
        self._map[: _MARK.size + len(raw)] = _MARK.pack(seq, len(raw)) + raw
        if self._failpoints and data.startswith(FAILPOINT_CRASH):
            log.critical("failpoint: frame %d of session %s crashes this lane", seq, sid)
            os._exit(FAILPOINT_EXIT_CODE)

    def clear(self) -> None:
        _SessionOfRecords.current = None
        self._map[: _MARK.size] = _MARK.pack(0, 0)


class _SessionOfRecords(logging.Filter):
    """Gives a lane's log records the session whose frames it is writing (the media code it
    calls knows no session: its warnings said which frame, not whose)."""

    current: str | None = None  # (a lane writes on one thread, one session at a time)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.current is not None and not hasattr(record, "session_id"):
            record.session_id = self.current
        return True


def read_mark(directory: Path) -> tuple[str, int] | None:
    """The frame (session id, sequence) a dead lane was writing into HLS, if it was."""
    try:
        with open(directory / MARK_FILE, "rb") as f:
            head = f.read(_MARK_BYTES)
    except FileNotFoundError:
        return None
    if len(head) < _MARK.size:
        return None
    seq, size = _MARK.unpack_from(head)
    if not seq:
        return None
    return head[_MARK.size : _MARK.size + size].decode(errors="replace"), seq


class _LaneState:
    """A lane's writers and WAL, served one request at a time."""

    def __init__(self, directory: Path, rotate_bytes: int, failpoints: bool = False) -> None:
        self.wal = Wal(directory, rotate_bytes)
        self.mark = _Marker(directory, failpoints)
        self.writers: dict[str, SessionWriter] = {}
        self.failed: dict[str, Failed] = {}  # writers that raised while writing a backlog

    def wal_open(self) -> dict[str, list[list[Any]]]:
        return self.wal.open()

    def carry(self, records: list[list[Any]]) -> int:
        """Append a session's records as read (its reopening failed) so that they outlive the
        old files; durable with the recovery's end. Returns the file they went to."""
        index = self.wal.index
        for record in records:
            index = self.wal.append(record)
        return index

    def finish_recovery(self) -> int:
        self.wal.finish_recovery()
        return self.wal.index

    def open(self, params: WriterParams, records: list[list[Any]]) -> Any:
        writer = SessionWriter(params, self.wal, self.mark)
        opened = writer.open(records)
        self.mark.clear()
        self.writers[params.session_id] = writer
        self.failed.pop(params.session_id, None)
        return opened

    def tick(self, work: list[tuple[str, list[tuple[Any, ...]]]]) -> tuple[Any, ...]:
        """Log each session's items (``SessionWriter.process``) and fsync: (an outcome per
        session, news of the others, the fsync's seconds, the WAL file, a backlog is left)."""
        if self._overdue():  # the lane cannot keep up: acknowledge more slowly, writing the
            # oldest backlogs until it is back within bounds (first: what they close is
            # reported with this tick)
            self.write_backlogs(lambda: not self._overdue())
        out: list[Outcome | Failed] = []
        for sid, items in work:
            writer = self.writers.get(sid)
            if writer is None:
                out.append(self.failed.get(sid) or Failed(f"session {sid} is not open here"))
                continue
            try:
                out.append(writer.process(items))
            except Exception as exc:  # one session's failure is that session's alone
                out.append(self._broken(sid, exc))
        self.mark.clear()
        began = time.monotonic()
        try:
            self.wal.sync()
        except OSError as exc:  # the disk failed: nothing of this tick may be acknowledged
            log.critical("WAL sync failed: %s", exc)
            out = [Failed(f"WAL sync failed: {exc}")] * len(work)
        sync_s = time.monotonic() - began
        news = self._news({sid for sid, _ in work})
        return out, news, sync_s, self.wal.index, self.due() is not None

    def flush(self) -> tuple[list[tuple[str, Outcome | Failed]], int]:
        """Write every backlog and report what came of it: (news, the WAL file)."""
        self.write_backlogs()
        self.wal.sync()  # the cuts reported must be durable before their WAL files go
        return self._news(set()), self.wal.index

    def due(self) -> float | None:
        """When the oldest backlog is to be written (monotonic time; None: nothing waits)."""
        since = [w.backlog_since for w in self.writers.values() if w.backlog_since is not None]
        return min(since) + WRITE_DELAY_S if since else None

    def _overdue(self) -> bool:
        due = self.due()
        if due is None:
            return False
        held = sum(w.backlog_bytes for w in self.writers.values())
        return held > BACKLOG_MAX_BYTES or time.monotonic() > due - WRITE_DELAY_S + BACKLOG_MAX_S

    def write_backlogs(self, enough: Callable[[], bool] | None = None) -> None:
        """Write the sessions' logged frames into HLS, oldest backlog first; stop early, between
        sessions, once ``enough`` says so (a request waits, the lane is within bounds)."""
        waiting = sorted(
            (w for w in self.writers.values() if w.backlog_since is not None),
            key=lambda w: w.backlog_since or 0.0,
        )
        for writer in waiting:
            try:
                writer.write_backlog()
            except Exception as exc:
                self._broken(writer.session_id, exc)
            if enough is not None and enough():
                break
        self.mark.clear()

    def _broken(self, sid: str, exc: Exception) -> Failed:
        """A session's writer raised (a bug): it fails from now on, the lane goes on."""
        log.exception("writing failed", extra={"session_id": sid})
        failed = self.failed[sid] = Failed(f"{type(exc).__name__}: {exc}")
        self.writers.pop(sid, None)
        return failed

    def _news(self, told: set[str]) -> list[tuple[str, Outcome | Failed]]:
        """The closed segments and refused frames of sessions not in ``told``, and failures."""
        news: list[tuple[str, Outcome | Failed]] = []
        for sid in [sid for sid in self.failed if sid not in told]:
            news.append((sid, self.failed.pop(sid)))  # told once; its ticks fail from now on
        for sid, writer in self.writers.items():
            if sid not in told and (outcome := writer.news()) is not None:
                news.append((sid, outcome))
        return news

    def finish(self, sid: str) -> Any:
        cuts = self.writers.pop(sid).finish()
        self.mark.clear()
        self.wal.sync()  # the cuts reported must be durable before their WAL files go
        return cuts

    def close(self, sid: str) -> None:
        writer = self.writers.pop(sid, None)
        if writer is not None:
            writer.close()

    def release(self, keep_from: int) -> None:
        self.wal.release([keep_from])

    def stop(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
        self.wal.close()


def lane_main(
    conn: Connection,
    directory: str,
    rotate_bytes: int,
    log_setup: LogSetup | None,
    failpoints: bool = False,
) -> None:
    """A lane process: serve requests until ``stop`` or until the server's end closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if log_setup is not None:
        log_setup[0](*log_setup[1])
    for handler in logging.getLogger().handlers:
        handler.addFilter(_SessionOfRecords())
    state = _LaneState(Path(directory), rotate_bytes, failpoints)
    while True:
        due = state.due()
        if due is not None and not conn.poll(max(0.0, due - time.monotonic())):
            state.write_backlogs(conn.poll)  # (requests first: acknowledgements wait less)
            continue
        try:
            op, args = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):  # the server is gone: make what we hold durable and go
            state.stop()
            return
        try:
            reply: tuple[str, Any] = ("ok", getattr(state, op)(*args))
        except Exception as exc:
            log.exception("lane request %s failed", op)
            reply = ("err", f"{type(exc).__name__}: {exc}")
        conn.send_bytes(pickle.dumps(reply, PICKLE_PROTOCOL))
        if op == "stop":
            return


# the server's side ----------------------------------------------------------------------------


class _Replies(asyncio.Protocol):
    """The server's end of a lane's pipe, on the event loop: requests go out framed as
    ``multiprocessing.Connection`` frames them (the lane reads them with ``recv_bytes``) and
    replies come back in the order the requests went out."""

    def __init__(self, lane: Lane) -> None:
        self._lane = lane
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None
        # the reply of each request sent and not answered yet, oldest first
        self.waiting: deque[asyncio.Future[bytes]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while len(buf) >= 4:
            (size,) = _SIZE.unpack_from(buf)
            head = 4
            if size == -1:  # (multiprocessing's framing of a message over 2 GiB)
                if len(buf) < 12:
                    return
                (size,) = _BIG_SIZE.unpack_from(buf, 4)
                head = 12
            if len(buf) < head + size:
                return
            reply = bytes(buf[head : head + size])
            del buf[: head + size]
            if self.waiting:
                fut = self.waiting.popleft()
                if not fut.done():
                    fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lane._gone(self, exc)


class Lane:
    """The server's handle on one lane process."""

    def __init__(
        self,
        number: int,
        directory: Path,
        rotate_bytes: int,
        log_setup: LogSetup | None,
        failpoints: bool = False,
    ) -> None:
        self.number = number
        self.directory = directory
        self._rotate_bytes = rotate_bytes
        self._log_setup = log_setup
        self._failpoints = failpoints
        self._pipe: _Replies | None = None
        self._proc: Any = None
        self._dead = False
        self.on_exit: Callable[[], None] | None = None  # told when the process exits unasked
        self._watched: int | None = None  # the process sentinel the event loop watches

    async def start(self) -> None:
        """Start the process (blocking parts in a thread) and connect to its pipe."""
        ours, theirs = socket.socketpair()
        child = Connection(theirs.detach())
        self._proc = _CONTEXT.Process(
            target=lane_main,
            args=(
                child,
                str(self.directory),
                self._rotate_bytes,
                self._log_setup,
                self._failpoints,
            ),
            name=f"reelhouse-lane-{self.number}",
            daemon=True,
        )
        loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self._start_process)
        finally:
            child.close()
        pipe = _Replies(self)
        await loop.connect_accepted_socket(lambda: pipe, ours)
        self._pipe = pipe
        # the sentinel turns readable when the process exits: a crash is noticed at once,
        # even in a lane with no session writing (nothing else would ask it anything)
        self._watched = self._proc.sentinel
        loop.add_reader(self._watched, self._exited)

    def _start_process(self) -> None:
        # one at a time: Process.start polls every other child of this process, and one
        # polled while its own start is still reading its pid reads that pid as an exit code
        with _START_LOCK:
            self._proc.start()

    def _exited(self) -> None:
        self._unwatch()
        self._dead = True
        log.critical("writer lane %d (pid %s) exited", self.number, self.pid)
        if self.on_exit is not None:
            self.on_exit()

    def _unwatch(self) -> None:
        if self._watched is not None:
            asyncio.get_running_loop().remove_reader(self._watched)
            self._watched = None

    def _gone(self, pipe: _Replies, exc: Exception | None) -> None:
        """The pipe closed: the process is gone (or going); every request not answered fails."""
        self._dead = True
        while pipe.waiting:
            fut = pipe.waiting.popleft()
            if not fut.done():
                fut.set_exception(LaneDied(f"writer lane {self.number} is gone ({exc!r})"))

    @property
    def dead(self) -> bool:
        """The process has exited (or never answered): it takes no more requests. (One still
        starting is not polled: an unstarted process reads as not alive.)"""
        if not self._dead and self._pipe is not None and not self._proc.is_alive():
            self._dead = True  # (is_alive polls the exit without waiting)
        return self._dead

    @property
    def pid(self) -> int | None:
        """The lane's process id (None before start)."""
        return self._proc.pid if self._proc is not None else None

    async def call(self, op: str, *args: Any) -> Any:
        """One request, answered in order after every earlier one."""
        pipe = self._pipe
        if self._dead or pipe is None or pipe.transport is None or pipe.transport.is_closing():
            # (not ``dead``: polling the process on every tick costs a syscall)
            raise LaneDied(f"writer lane {self.number} is gone")
        request = pickle.dumps((op, args), PICKLE_PROTOCOL)
        size = len(request)
        head = _SIZE.pack(size) if size <= 0x7FFFFFFF else _SIZE.pack(-1) + _BIG_SIZE.pack(size)
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        pipe.waiting.append(reply)
        if size > _INLINE_BYTES:
            pipe.transport.write(head)
            pipe.transport.write(request)
        else:
            pipe.transport.write(head + request)
        data = await reply
        if len(data) > _INLINE_BYTES:  # a WAL's records at recovery: not on the event loop
            status, value = await asyncio.to_thread(pickle.loads, data)
        else:
            status, value = pickle.loads(data)
        if status != "ok":
            raise LaneError(value)
        return value

    def kill(self) -> None:
        """End the process at once (SIGKILL); its exit is then handled as a crash's."""
        if self._proc is not None and self._proc.pid is not None and not self._dead:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGKILL)

    async def settled(self) -> None:
        """Wait until every request made so far has been answered or has failed."""
        pipe = self._pipe
        if pipe is not None and pipe.waiting:
            await asyncio.wait(list(pipe.waiting))

    async def stop(self) -> None:
        """Ask the lane to close its WAL and exit; kill it if it does not."""
        if self._proc is None:
            return
        self._unwatch()  # exiting now is asked for
        if not self.dead:
            try:
                await asyncio.wait_for(self.call("stop"), STOP_TIMEOUT_S)
            except (LaneError, TimeoutError) as exc:
                log.error("writer lane %d did not stop cleanly: %s", self.number, exc)
        await asyncio.to_thread(self._join)
        self._dead = True
        if self._pipe is not None and self._pipe.transport is not None:
            self._pipe.transport.close()

    def _join(self) -> None:
        self._proc.join(STOP_TIMEOUT_S)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
