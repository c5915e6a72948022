"""The video processing job: confirmed uploads made playable in the background.

Its state is the recording's status in the metadata store: every ``processing`` recording is
work to do, so ``start`` picks up whatever a stopped server left, and running a recording twice
is harmless (the outputs are rebuilt from the original, which is never changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
from pathlib import Path

from storage.errors import ObjectNotFound, StorageError, StoreUnavailable
from storage.meta import MetaStore
from storage.objects import ObjectStore
from storage.recordings import RecordingRow, RecordingStatus

from .recordings_video import Stopped, VideoFailed, VideoResult, process_video

log = logging.getLogger(__name__)

RETRY_BASE_S = 1.0  # a storage failure is retried after this, doubling each time
RETRY_MAX_S = 30.0
MAX_ATTEMPTS = 5  # runs of one recording (restarts included) before it is failed
_PROCESSING = (RecordingStatus.PROCESSING,)


def _append(path: Path, data: bytes) -> None:
    # opened and closed per chunk: a job cancelled mid-download leaves no open file
    with open(path, "ab") as f:
        f.write(data)


def _prefix(row: RecordingRow) -> str:
    return f"captures/{row.tenant_id}/{row.recording_id}/"


class VideoProcessor:
    """Runs processing jobs one at a time (the machine's cores belong to live sessions first)."""

    def __init__(self, meta: MetaStore, store: ObjectStore, work_dir: Path) -> None:
        self._meta = meta
        self._store = store
        self._work_dir = work_dir
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._worker: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self._retries: set[asyncio.Task[None]] = set()
        self._outages: dict[str, int] = {}  # storage failures in a row, by recording: backoff

    async def start(self) -> None:
        """Resume every recording a previous run left in ``processing``."""
        # a stopped server's half-made outputs are rebuilt from the original anyway
        await asyncio.to_thread(shutil.rmtree, self._work_dir, True)
        await asyncio.to_thread(self._work_dir.mkdir, parents=True, exist_ok=True)
        for row in await self._meta.recordings_with_status(RecordingStatus.PROCESSING):
            log.info("resuming video processing of recording %s", row.recording_id)
            self.submit(row.recording_id)
        self._worker = asyncio.create_task(self._run(), name="recordings-video")

    def submit(self, recording_id: str) -> None:
        """Queue a recording (once; a queued or running one is not queued again)."""
        if recording_id not in self._queued and recording_id not in self._running:
            self._queued.add(recording_id)
            self._queue.put_nowait(recording_id)

    async def cancel(self, recording_id: str) -> None:
        """Drop a queued recording and stop a running one, waiting until it has stopped."""
        self._queued.discard(recording_id)
        task = self._running.get(recording_id)
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def wait_settled(self, recording_id: str) -> RecordingRow | None:
        """Wait until the recording is out of ``processing``; its row (``None`` if deleted)."""
        async with self._changed:
            while True:
                row = await self._meta.get_recording(recording_id, None)
                if row is None or row.status != RecordingStatus.PROCESSING:
                    return row
                await self._changed.wait()

    async def aclose(self) -> None:
        """Stop the worker and any job; processing rows stay for the next start."""
        tasks = [*self._running.values(), *self._retries]
        if self._worker is not None:
            tasks.append(self._worker)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._worker = None

    async def _run(self) -> None:
        while True:
            recording_id = await self._queue.get()
            if recording_id not in self._queued:
                continue  # cancelled while queued
            self._queued.discard(recording_id)
            task = asyncio.create_task(self._process(recording_id))
            self._running[recording_id] = task
            try:
                await asyncio.wait([task])
                if not task.cancelled() and task.exception() is not None:
                    log.error("processing %s crashed", recording_id, exc_info=task.exception())
            finally:
                self._running.pop(recording_id, None)
                async with self._changed:
                    self._changed.notify_all()

    async def _process(self, recording_id: str) -> None:
        row = await self._meta.update_recording(recording_id, only_from=_PROCESSING)
        if row is None:
            return  # deleted, or no longer processing
        if row.attempts >= MAX_ATTEMPTS:
            await self._fail(row, "processing failed too many times")
            return
        row = await self._meta.update_recording(
            recording_id, only_from=_PROCESSING, attempts=row.attempts + 1
        )
        if row is None or row.video_key is None:
            return
        work = self._work_dir / recording_id
        try:
            result = await self._make(row, work)
            if result is not None:
                # a store write runs on in its thread when its awaiter is cancelled: let the
                # uploads finish, so a delete that cancelled us lists every object they made
                upload = asyncio.ensure_future(self._upload(row, result))
                try:
                    await asyncio.shield(upload)
                except asyncio.CancelledError:
                    await asyncio.wait([upload])
                    if not upload.cancelled() and upload.exception() is not None:
                        log.warning("recording %s: upload failed while stopping", recording_id)
                    raise
        except (StorageError, OSError) as exc:  # the store, or the work disk (full?): later
            outages = self._outages[recording_id] = self._outages.get(recording_id, 0) + 1
            delay = min(RETRY_MAX_S, RETRY_BASE_S * 2**outages)
            log.warning(
                "recording %s: storage failed (%s); retry in %.0f s", recording_id, exc, delay
            )
            if isinstance(exc, StoreUnavailable):
                # an outage is no fault of the video: the run is not counted against it (a
                # refusal, or the work disk too small, is counted: those do not pass)
                await self._meta.update_recording(
                    recording_id, only_from=_PROCESSING, attempts=row.attempts - 1
                )
            retry = asyncio.create_task(self._retry_later(recording_id, delay))
            self._retries.add(retry)
            retry.add_done_callback(self._retries.discard)
            return
        except Exception:  # a bug, or media nothing above expected: failed, never left hanging
            log.exception("recording %s: processing failed", recording_id)
            await self._fail(row, "processing failed: an internal error (logged on the server)")
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        self._outages.pop(recording_id, None)

    async def _retry_later(self, recording_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        self.submit(recording_id)

    async def _make(self, row: RecordingRow, work: Path) -> VideoResult | None:
        assert row.video_key is not None  # checked by the caller
        await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
        src = work / "original"
        try:
            await self._download(row.video_key, src)
        except ObjectNotFound:
            await self._fail(row, "the uploaded video is no longer in storage")
            return None
        stop = threading.Event()
        job = asyncio.ensure_future(asyncio.to_thread(process_video, src, work / "out", stop))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            stop.set()  # the thread cannot be cancelled: tell it, and wait for it to end
            with contextlib.suppress(Stopped, VideoFailed):
                await asyncio.wait([job])
            raise
        except VideoFailed as exc:
            await self._fail(row, str(exc))
            return None

    async def _download(self, key: str, dest: Path) -> None:
        await asyncio.to_thread(dest.write_bytes, b"")
        async with contextlib.aclosing(self._store.stream(key)) as chunks:
            async for chunk in chunks:
                await asyncio.to_thread(_append, dest, chunk)

    async def _upload(self, row: RecordingRow, result: VideoResult) -> None:
        prefix = _prefix(row)
        await self._store.put_file(prefix + "thumbnail.jpg", result.thumbnail, "image/jpeg")
        for path in result.hls_files:  # playlist last: it names segments already there
            await self._store.put_file(prefix + "hls/" + path.name, path)
        done = await self._meta.update_recording(
            row.recording_id,
            only_from=_PROCESSING,
            status=RecordingStatus.READY,
            video_duration_ms=result.duration_ms,
            failure_reason=None,
        )
        if done is None and await self._meta.get_recording(row.recording_id, None) is None:
            # deleted while we uploaded: take away what the delete could not see yet
            async for info in self._store.list(prefix):
                await self._store.delete(info.key)
        log.info("recording %s ready: %d ms of video", row.recording_id, result.duration_ms)

    async def _fail(self, row: RecordingRow, reason: str) -> None:
        log.warning("recording %s failed: %s", row.recording_id, reason)
        await self._meta.update_recording(
            row.recording_id,
            only_from=_PROCESSING,
            status=RecordingStatus.FAILED,
            failure_reason=reason,
        )
