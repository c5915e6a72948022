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
``finish``, ``close``, ``release``, ``wal_open``, ``finish_recovery``, ``stop``. The server's
end is a protocol on the event loop: a tick's request is a pickle of byte strings (a copy),
and handing it to a thread cost more than the copy (a thread wake-up and a GIL hand-over each
way, per tick and lane). Only a large reply (a WAL's records at recovery) is unpickled in a
thread.

A lane ignores SIGINT (Ctrl-C reaches the whole process group; the server decides when a lane
stops, after its sessions made their open segments safe) and exits when the server's end of
the pipe closes, so a killed server leaves no lane behind. A lane that dies (a crash in a
codec) fails its sessions' writes and is noticed at once (the event loop watches its exit);
the pool restarts it on the same WAL and the session manager replays its sessions, as at a
server start (``WriterPool.lane_died``, ``SessionManager._recover_lane``). The frames the
dead lane was writing are written one per request when their clients resend them, so that a
frame it dies on again is named, and skipped by the next restart (``writer.Crash``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
UNTAGGED = "untagged"  # ``Lane.died_during`` of a request that named nothing
_SIZE = struct.Struct("!i")  # ``multiprocessing.Connection``'s framing
_BIG_SIZE = struct.Struct("!Q")
# a reply larger than this is unpickled in a thread (the WAL's records at recovery, say), and
# a request this large is written without a copy joining it to its header
_INLINE_BYTES = 1 << 20


class LaneError(RuntimeError):
    """A lane refused a request (the message says why) or is gone."""


class LaneDied(LaneError):
    """The lane process exited; its sessions wait for its restart."""


# the lane process ----------------------------------------------------------------------------


class _LaneState:
    """A lane's writers and WAL, served one request at a time."""

    def __init__(self, directory: Path, rotate_bytes: int, failpoints: bool = False) -> None:
        self.wal = Wal(directory, rotate_bytes)
        self.writers: dict[str, SessionWriter] = {}
        self.failpoints = failpoints

    def wal_open(self) -> dict[str, list[list[Any]]]:
        return self.wal.open()

    def finish_recovery(self) -> int:
        self.wal.finish_recovery()
        return self.wal.index

    def open(self, params: WriterParams, records: list[list[Any]]) -> Any:
        writer = SessionWriter(params, self.wal)
        opened = writer.open(records)
        self.writers[params.session_id] = writer
        return opened

    def tick(
        self, work: list[tuple[str, list[tuple[Any, ...]]]]
    ) -> tuple[list[Outcome | Failed], float, int]:
        out: list[Outcome | Failed] = []
        for sid, items in work:
            if self.failpoints and any(
                i[0] == "media" and i[7].startswith(FAILPOINT_CRASH) for i in items
            ):
                log.critical("failpoint: a frame of session %s crashes this lane", sid)
                os._exit(FAILPOINT_EXIT_CODE)
            writer = self.writers.get(sid)
            if writer is None:
                out.append(Failed(f"session {sid} is not open in this lane"))
                continue
            try:
                out.append(writer.process(items))
            except Exception as exc:  # one session's failure is that session's alone
                log.exception("writing failed", extra={"session_id": sid})
                out.append(Failed(f"{type(exc).__name__}: {exc}"))
        began = time.monotonic()
        try:
            self.wal.sync()
        except OSError as exc:  # the disk failed: nothing of this tick may be acknowledged
            log.critical("WAL sync failed: %s", exc)
            out = [Failed(f"WAL sync failed: {exc}")] * len(work)
        return out, time.monotonic() - began, self.wal.index

    def finish(self, sid: str) -> Any:
        return self.writers.pop(sid).finish()

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
    state = _LaneState(Path(directory), rotate_bytes, failpoints)
    while True:
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
        # (reply, tag) of each request sent and not answered yet, oldest first
        self.waiting: deque[tuple[asyncio.Future[bytes], Any]] = deque()

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
                fut, _ = self.waiting.popleft()
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
        # the tag of the request the process died answering (see ``call``), if it did
        self.died_during: Any = None
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
        """The pipe closed: the process is gone (or going). The oldest request not answered
        is the one it died on; it and every later one fail."""
        self._dead = True
        if pipe.waiting and self.died_during is None:
            tag = pipe.waiting[0][1]
            self.died_during = UNTAGGED if tag is None else tag
        while pipe.waiting:
            fut, _ = pipe.waiting.popleft()
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

    async def call(self, op: str, *args: Any, tag: Any = None) -> Any:
        """One request, answered in order after every earlier one. When the process dies
        while answering it (the request reached it, no answer came back), ``died_during``
        holds ``tag``: what the request was working on (a tick's sessions, say)."""
        pipe = self._pipe
        if self._dead or pipe is None or pipe.transport is None or pipe.transport.is_closing():
            # (not ``dead``: polling the process on every tick costs a syscall)
            raise LaneDied(f"writer lane {self.number} is gone")
        request = pickle.dumps((op, args), PICKLE_PROTOCOL)
        size = len(request)
        head = _SIZE.pack(size) if size <= 0x7FFFFFFF else _SIZE.pack(-1) + _BIG_SIZE.pack(size)
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        pipe.waiting.append((reply, tag))
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
        """Wait until every request made so far has been answered or has failed (so that
        ``died_during`` is known once the process is seen to exit)."""
        pipe = self._pipe
        if pipe is not None and pipe.waiting:
            await asyncio.wait([fut for fut, _ in pipe.waiting])

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
