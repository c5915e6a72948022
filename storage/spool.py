"""The durable spool: finished files wait here, fsync'd, until an object store confirms them.

Each item is two files in the spool directory, its bytes and its manifest, written as
``storage.spool_disk`` says: durable once its manifest exists. Items of one group upload
strictly in add order, one at a time;
groups upload in parallel on a fixed pool of workers. A queued ``replaceable`` file that a
later one of its group replaces (the same key in the same store: a playlist written again
after every segment) is dropped unsent: after an outage, a session's backlog holds one
playlist, not one per segment recorded meanwhile.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import heapq
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .errors import SpoolFull, StoreRefused
from .objects import ObjectInfo, ObjectStore
from .spool_disk import (
    SpoolItem,
    data_name,
    recover,
    remove_items,
    write_item,
    write_manifest,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_WORKERS = 4
DEFAULT_RETRY_BASE_S = 0.2
DEFAULT_RETRY_MAX_S = 30.0
DEFAULT_DRAIN_TIMEOUT_S = 5.0

OnUploaded = Callable[["SpoolItem", ObjectInfo, float], Awaitable[None]]


@dataclass(slots=True)
class _Group:
    queue: list[tuple[int, SpoolItem]] = field(default_factory=list)  # heap by item_id
    adding: set[int] = field(default_factory=set)  # ids reserved by adds still writing
    busy: bool = False  # queued on the ready queue or being uploaded by a worker
    # superseded items whose files may still be on disk (id → key): removed before the copy
    # that replaced them leaves the disk, or a restart would upload them over it
    dropped: dict[int, str] = field(default_factory=dict)


class Spool:
    """A directory of fsync'd files and the workers that upload them with retry."""

    def __init__(
        self,
        directory: Path,
        resolve_store: Callable[[str], ObjectStore],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        workers: int = DEFAULT_WORKERS,
        retry_base_s: float = DEFAULT_RETRY_BASE_S,
        retry_max_s: float = DEFAULT_RETRY_MAX_S,
        on_uploaded: OnUploaded | None = None,
    ) -> None:
        if workers < 1 or max_bytes < 1 or not 0 < retry_base_s <= retry_max_s:
            raise ValueError("spool needs workers >= 1, max_bytes >= 1, 0 < retry_base_s <= max")
        self.directory = directory
        self._resolve_store = resolve_store
        self.max_bytes = max_bytes
        self._workers = workers
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._on_uploaded = on_uploaded
        self._random = random.Random()
        self._groups: dict[str, _Group] = {}
        self._ready: asyncio.Queue[str] = asyncio.Queue()  # groups whose head may upload now
        self._tasks: set[asyncio.Task[None]] = set()
        self._uploading: set[asyncio.Task[None]] = set()  # workers in the middle of an item
        self._backoffs: set[asyncio.TimerHandle] = set()  # groups waiting to be tried again
        self._changed = asyncio.Condition()  # notified whenever an item leaves or arrives
        self._closing = asyncio.Event()
        self._next_id = 1
        # (group, old store id) → new: a group's files retargeted while some were being added
        self._retargeted: dict[tuple[str, str], str] = {}
        self._writing: dict[int, str] = {}  # adds under way: item id → store id
        self._attempting: dict[str, str] = {}  # uploads under way: group → store id
        self._pending = 0  # items added (or being added) and not yet confirmed
        self._bytes = 0
        self._full_logged = False
        self._started = False
        self.uploaded_total = 0
        self.uploaded_bytes_total = 0
        self.upload_failures_total = 0
        self.superseded_total = 0  # queued files dropped unsent: a later one replaced them
        self.unreadable = 0  # items kept for a person: their manifest did not parse

    @property
    def depth(self) -> int:
        """Items waiting for a confirmed upload (including those being added or uploaded)."""
        return self._pending

    @property
    def bytes(self) -> int:
        """Bytes held in the spool (including adds in progress)."""
        return self._bytes

    @property
    def full(self) -> int:
        """1 while the spool refuses new files (an add was refused and none fitted since)."""
        return int(self._full_logged or self._bytes >= self.max_bytes)

    def oldest_pending_s(self) -> float:
        """Seconds the oldest queued file has waited for its upload; 0 when none waits."""
        heads = [state.queue[0][1].added_at for state in self._groups.values() if state.queue]
        if not heads:
            return 0.0
        return max(0.0, (datetime.now(UTC) - min(heads)).total_seconds())

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover the items a previous run left behind, then start the upload workers."""
        if self._closing.is_set():
            raise RuntimeError("spool is closed")
        if self._started:
            return
        self._started = True
        items, unreadable = await asyncio.to_thread(recover, self.directory)
        self.unreadable += unreadable
        dropped: list[SpoolItem] = []
        for item in items:
            self._next_id = max(self._next_id, item.item_id + 1)
            self._pending += 1
            self._bytes += item.size
            dropped += self._enqueue(item, settle=False)  # (no head is in flight yet)
        for group in list(self._groups):
            self._settle_group(group)
        await self._forget(dropped)
        if items:
            log.info("spool recovered %d items (%d bytes)", len(items), self._bytes)
        for n in range(self._workers):
            task = asyncio.create_task(self._worker(), name=f"spool-upload-{n}")
            self._tasks.add(task)

    async def aclose(self, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_S) -> None:
        """Stop accepting, let in-flight uploads finish for ``drain_timeout`` s, then stop.

        Items not confirmed by then stay on disk for the next ``start``.
        """
        if self._closing.is_set() and not self._tasks:
            return
        self._closing.set()
        async with self._changed:
            self._changed.notify_all()  # waiters see the spool will not drain any further
        for task in self._tasks - self._uploading:
            task.cancel()  # idle workers: nothing to finish
        if self._uploading:
            await asyncio.wait(set(self._uploading), timeout=drain_timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._uploading.clear()
        for timer in self._backoffs:
            timer.cancel()
        self._backoffs.clear()

    # adding ------------------------------------------------------------------------------

    async def add(
        self,
        key: str,
        src: Path,
        *,
        group: str,
        store_id: str = "default",
        content_type: str | None = None,
        move: bool = True,
        over_cap: bool = False,
    ) -> SpoolItem:
        """Take ``src`` into the spool (moved, or copied when ``move`` is false) and queue it.

        When this returns the file is fsync'd in the spool and will be uploaded even across a
        crash; ``SpoolFull`` when it would push the spool over ``max_bytes`` (``src`` untouched)
        unless ``over_cap``: a file the disk holds already (a recording's last files at END),
        taken anyway, so that finishing never waits on uploads; ``full`` still reports it.
        """
        item_id = self._reserve(group)  # before the first await: ids follow call order
        try:
            size = (await asyncio.to_thread(src.stat)).st_size
        except BaseException:
            self._release(group, item_id, 0)
            raise
        return await self._add(
            item_id, key, group, store_id, content_type, size, src, b"", move, over_cap
        )

    async def add_bytes(
        self,
        key: str,
        data: builtins.bytes,
        *,
        group: str,
        store_id: str = "default",
        content_type: str | None = None,
        over_cap: bool = False,
        replaceable: bool = False,
    ) -> SpoolItem:
        """Write ``data`` into the spool and queue it; durable when this returns (``over_cap``:
        as for ``add``, for a small file finishing a recording: its final playlist).
        ``replaceable``: a later replaceable copy of the key makes this one redundant while it
        waits, and nothing queued after it needs it first (a playlist: nothing names it)."""
        item_id = self._reserve(group)
        return await self._add(
            item_id, key, group, store_id, content_type, len(data), None, data, False,
            over_cap, replaceable,
        )  # fmt: skip

    def _reserve(self, group: str) -> int:
        if not self._started:
            raise RuntimeError("spool is not started")
        if self._closing.is_set():
            raise RuntimeError("spool is closed")
        item_id = self._next_id
        self._next_id += 1
        self._pending += 1
        # the group's later items wait for this one even before its bytes are written
        self._groups.setdefault(group, _Group()).adding.add(item_id)
        return item_id

    def _release(self, group: str, item_id: int, size: int) -> None:
        self._pending -= 1
        self._bytes -= size
        self._groups[group].adding.discard(item_id)
        self._settle_group(group)

    async def _add(
        self,
        item_id: int,
        key: str,
        group: str,
        store_id: str,
        content_type: str | None,
        size: int,
        src: Path | None,
        data: builtins.bytes,
        move: bool,
        over_cap: bool = False,
        replaceable: bool = False,
    ) -> SpoolItem:
        if self._bytes + size > self.max_bytes and not over_cap:
            self._release(group, item_id, 0)
            if not self._full_logged:  # once per episode: a full spool would flood the log
                self._full_logged = True
                log.error(
                    "spool full: %d + %d bytes exceeds %d; refusing %s",
                    *(self._bytes, size, self.max_bytes, key),
                    extra={"key": key, "session_id": group},
                )
            async with self._changed:
                self._changed.notify_all()  # waiters watching ``full`` see the refusal
            raise SpoolFull(f"spool holds {self._bytes} bytes; {key} ({size} bytes) does not fit")
        self._bytes += size  # reserved before the await, so concurrent adds cannot overshoot
        store_id = self._retargeted.get((group, store_id), store_id)
        item = SpoolItem(
            item_id, key, store_id, group, content_type, size, datetime.now(UTC), replaceable
        )
        self._writing[item_id] = store_id  # (its store is needed from now on: store_ids)
        try:
            await asyncio.to_thread(write_item, self.directory, item, src, data, move)
            if (moved := self._retargeted.get((group, store_id))) is not None:
                # retargeted while its manifest was being written: written again
                item = dataclasses.replace(item, store_id=moved)
                self._writing[item_id] = moved
                await asyncio.to_thread(write_manifest, self.directory, item)
        except BaseException:
            self._release(group, item_id, size)
            raise
        finally:
            del self._writing[item_id]
        self._full_logged = False
        self._groups[group].adding.discard(item_id)
        dropped = self._enqueue(item)
        async with self._changed:
            self._changed.notify_all()
        await self._forget(dropped)
        return item

    # retargeting -------------------------------------------------------------------------

    async def retarget(self, group: str, old: str, new: str) -> int:
        """Send ``group``'s files that wait for store ``old`` to store ``new`` instead (the same
        bucket with renewed credentials); returns how many moved. Their manifests are written
        again first, so a restart keeps the change; an add of the group still under way with
        ``old`` gets ``new`` too. An upload attempt in flight ends with the store it began
        with; the next attempt uses ``new``."""
        state = self._groups.get(group)
        if old == new or state is None:  # (an add under way has its group already)
            return 0
        # every earlier id of the group now leads to ``new`` in one step (A → B, then B → A:
        # no cycle)
        for earlier, target in list(self._retargeted.items()):
            if earlier[0] == group and target == old:
                self._retargeted[earlier] = new
        self._retargeted.pop((group, new), None)
        self._retargeted[(group, old)] = new
        moving = [item for _, item in state.queue if item.store_id == old]
        moved = [dataclasses.replace(item, store_id=new) for item in moving]
        for item in moved:
            await asyncio.to_thread(write_manifest, self.directory, item)
        by_id = {item.item_id: item for item in moved}
        state = self._groups.get(group)  # (uploads may have confirmed some meanwhile)
        if state is not None:
            # same ids in the same places: still a heap
            state.queue = [(i, by_id.get(i, item)) for i, item in state.queue]
        return len(moved)

    def pending(self, group: str) -> list[tuple[str, Path]]:
        """The key and data file of each of ``group``'s queued items, oldest first: what its
        stores have not confirmed yet. A file may be gone by the time it is read (its upload
        was confirmed meanwhile)."""
        state = self._groups.get(group)
        if state is None:
            return []
        return [
            (item.key, self.directory / data_name(item.item_id)) for _, item in sorted(state.queue)
        ]

    def store_ids(self) -> set[str]:
        """The stores that files here are for: queued, being added or being uploaded."""
        queued = {item.store_id for state in self._groups.values() for _, item in state.queue}
        return queued | set(self._writing.values()) | set(self._attempting.values())

    # scheduling --------------------------------------------------------------------------

    def _enqueue(self, item: SpoolItem, *, settle: bool = True) -> list[SpoolItem]:
        """Queue ``item``; returns the queued items it leaves nothing to do for (them or it),
        no longer counted: see :meth:`_supersede`. Their files are the caller's to remove."""
        state = self._groups.setdefault(item.group, _Group())
        heapq.heappush(state.queue, (item.item_id, item))
        dropped = self._supersede(state, item)
        if settle:
            self._settle_group(item.group)
        return dropped

    def _supersede(self, state: _Group, item: SpoolItem) -> list[SpoolItem]:
        """Drop the group's queued items for ``item``'s key and store but the newest (maybe
        not ``item``: an add that began later may be queued already), which overwrites them
        and goes up after all they follow. A head being tried (``busy``) stays: it may land."""
        if not item.replaceable:
            return []
        same = [
            (item_id, queued)
            for n, (item_id, queued) in enumerate(state.queue)
            if queued.key == item.key
            and queued.store_id == item.store_id
            and queued.replaceable
            and not (n == 0 and state.busy)
        ]
        if len(same) < 2:
            return []
        newest = max(item_id for item_id, _ in same)
        dropped = [queued for item_id, queued in same if item_id != newest]
        gone = {queued.item_id for queued in dropped}
        state.queue = [entry for entry in state.queue if entry[0] not in gone]
        heapq.heapify(state.queue)
        for queued in dropped:
            self._pending -= 1
            self._bytes -= queued.size
            state.dropped[queued.item_id] = queued.key
        self.superseded_total += len(dropped)
        return dropped

    async def _forget(self, dropped: list[SpoolItem]) -> None:
        """Remove superseded items' files (left behind, the copy that replaced them removes
        them first, or recovery supersedes them again)."""
        if not dropped:
            return
        try:
            await asyncio.to_thread(self._remove_sync, *(item.item_id for item in dropped))
        except OSError:
            log.exception("could not remove %d superseded spooled files", len(dropped))
            return
        for item in dropped:
            if (state := self._groups.get(item.group)) is not None:
                state.dropped.pop(item.item_id, None)

    def _settle_group(self, group: str) -> None:
        """Hand the group to a worker if its head may go now, or forget it when it is empty."""
        state = self._groups.get(group)
        if state is None or state.busy:
            return
        if not state.queue:
            if not state.adding:
                del self._groups[group]
                for moved in [k for k in self._retargeted if k[0] == group]:
                    del self._retargeted[moved]  # nothing of the group is left to move
            return
        head_id = state.queue[0][0]
        if state.adding and min(state.adding) < head_id:
            return  # an earlier add of this group is still writing; it goes first
        state.busy = True
        self._ready.put_nowait(group)

    async def _worker(self) -> None:
        current = asyncio.current_task()
        assert current is not None  # always run as a task
        while not self._closing.is_set():
            group = await self._ready.get()
            self._uploading.add(current)
            try:
                await self._upload_head(group)
            finally:
                self._uploading.discard(current)

    async def _upload_head(self, group: str) -> None:
        """One attempt at the group's oldest item. A failed one is tried again after a backoff
        during which the worker serves other groups: a file that never uploads (a store that
        refuses it, for good) holds up its own group only."""
        state = self._groups[group]
        # the head as it is now: a retarget may have changed its store since the last try
        _, head = state.queue[0]
        item = dataclasses.replace(head, attempts=head.attempts + 1)
        state.queue[0] = (item.item_id, item)  # (same id: still a heap)
        self._attempting[group] = item.store_id
        try:
            store = self._resolve_store(item.store_id)
            path = self.directory / data_name(item.item_id)
            info = await store.put_file(item.key, path, item.content_type)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.upload_failures_total += 1
            extra = {"key": item.key, "session_id": group, "attempt": item.attempts}
            # a refusal is the user's store saying no: loud, and a later policy may reroute
            level = logging.ERROR if isinstance(exc, StoreRefused) else logging.WARNING
            log.log(
                level, "upload of %s failed (attempt %d): %r", item.key, item.attempts, exc,
                extra=extra,
            )  # fmt: skip
            self._retry_later(group, item.attempts)
            async with self._changed:
                self._changed.notify_all()  # waiters watching failures see this one
            return
        finally:
            del self._attempting[group]
        extra = {"key": item.key, "session_id": group}
        latency_s = max(0.0, (datetime.now(UTC) - item.added_at).total_seconds())
        if self._on_uploaded is not None:
            try:
                await self._on_uploaded(item, info, latency_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                # the object is safe in the store; a failing hook must not re-upload forever
                log.exception("on_uploaded hook failed for %s", item.key, extra=extra)
        # older copies it superseded leave the disk first: left behind it, a restart would
        # upload them over it
        older = [i for i, key in state.dropped.items() if key == item.key and i < item.item_id]
        try:
            await asyncio.to_thread(self._remove_sync, *older, item.item_id)
        except OSError:
            # confirmed all the same; a copy left behind is uploaded again after a restart
            # (and supersedes the older ones again)
            log.exception("could not remove spooled %s", item.key, extra=extra)
        else:
            for i in older:
                state.dropped.pop(i, None)
        heapq.heappop(state.queue)
        state.busy = False
        self._bytes -= item.size
        self._pending -= 1
        self.uploaded_total += 1
        self.uploaded_bytes_total += item.size
        self._settle_group(group)
        async with self._changed:
            self._changed.notify_all()

    def _retry_later(self, group: str, attempts: int) -> None:
        """Hand the group (still busy: nothing else of it goes first) to a worker again after
        a jittered exponential backoff; once closing, its item stays on disk for the next
        start."""
        ceiling_s = min(self._retry_max_s, self._retry_base_s * 2 ** min(attempts - 1, 62))
        delay_s = self._random.uniform(self._retry_base_s, max(self._retry_base_s, ceiling_s))

        def due() -> None:
            self._backoffs.discard(timer)
            if not self._closing.is_set():
                self._ready.put_nowait(group)

        timer = asyncio.get_running_loop().call_later(delay_s, due)
        self._backoffs.add(timer)

    def _remove_sync(self, *item_ids: int) -> None:
        remove_items(self.directory, *item_ids)

    # waiting -----------------------------------------------------------------------------

    # a timeout argument (not asyncio.timeout) so a timeout is an answer, not an exception
    def holds(self, group: str, key: str) -> bool:
        """Whether ``key`` of ``group`` is waiting here (queued or being uploaded)."""
        state = self._groups.get(group)
        return state is not None and any(item.key == key for _, item in state.queue)

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is pending; false on timeout or when the spool closed first."""
        return await self._wait(lambda: self._pending == 0, timeout)

    async def wait_group(self, group: str, timeout: float | None = None) -> bool:
        """Wait until ``group`` has nothing pending; false on timeout or when the spool closed."""
        return await self._wait(lambda: group not in self._groups, timeout)

    async def wait_until(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``done()`` holds, checked whenever an item arrives or leaves."""
        return await self._wait(done, timeout)

    async def _wait(self, done: Callable[[], bool], timeout: float | None) -> bool:
        async def until() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: done() or self._closing.is_set())

        try:
            await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            pass
        return done()
