"""The local-disk object store: the embedded default behind ``reelhouse serve``.

Objects live at ``root/<key>``; each object's content type sits in a JSON sidecar at
``root/.meta/<key>.json`` so the object file itself is exactly the bytes that were put.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import stat
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from .durable import (
    TEMP_PREFIX,
    ensure_dir,
    fsync_dir,
    place_atomic,
    remove_quietly,
    write_atomic,
)
from .errors import ObjectNotFound, StorageError, StoreRefused, StoreUnavailable
from .objects import DEFAULT_CHUNK_BYTES, DEFAULT_PRESIGN_EXPIRY_S, ObjectInfo, content_type_for
from .presign import UrlSigner

MAX_KEY_BYTES = 1024  # S3's limit, so keys stay portable between stores
# a segment is a file name here, and a name has at most 255 bytes: room is left for the
# temporary name a write goes through (".tmp-" + name + "." + 32 hex digits) and the
# content-type sidecar's ".json"
MAX_KEY_SEGMENT_BYTES = 200
META_DIR = ".meta"  # reserved first key segment holding the sidecars
SIDECAR_SUFFIX = ".json"
# errors that mean "the disk is in trouble, try again later" rather than "this request is wrong"
_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EAGAIN, errno.EROFS})


def validate_key(key: str, max_segment_bytes: int | None = MAX_KEY_SEGMENT_BYTES) -> str:
    """Return ``key`` when it is a safe relative object key; raise ``ValueError`` otherwise.
    ``max_segment_bytes``: a segment's limit where segments are file names (None: S3's keys,
    which have none: a cloud recording's file name, channel and uid in it, may be longer)."""
    if not key:
        raise ValueError("object key must not be empty")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"object key longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        raise ValueError("object key must not start with '/'")
    if "\x00" in key or "\\" in key or "\n" in key:
        raise ValueError("object key contains a forbidden character")
    segments = key.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise ValueError(f"object key has an empty, '.' or '..' segment: {key!r}")
        if max_segment_bytes is not None and len(segment.encode()) > max_segment_bytes:
            raise ValueError(f"object key has a segment longer than {max_segment_bytes} bytes")
        if segment.startswith(TEMP_PREFIX):
            raise ValueError(f"object key segment must not start with {TEMP_PREFIX!r}")
    if segments[0] == META_DIR:
        raise ValueError(f"object key must not start with {META_DIR!r}")
    return key


def _map_os_error(exc: OSError, key: str) -> StorageError:
    if exc.errno in _TRANSIENT_ERRNOS:
        return StoreUnavailable(f"local store failed on {key}: {exc}")
    return StoreRefused(f"local store refused {key}: {exc}")


class LocalObjectStore:
    """An ``ObjectStore`` on a local directory; writes are atomic and fsync'd."""

    name = "local"

    def __init__(self, root: Path, signer: UrlSigner | None = None) -> None:
        self.root = root
        self._signer = signer

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _sidecar(self, key: str) -> Path:
        return self.root / META_DIR / (validate_key(key) + SIDECAR_SUFFIX)

    # blocking halves, run in a worker thread ------------------------------------------------

    def _info_sync(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        content_type = content_type_for(key)
        try:
            meta = json.loads(self._sidecar(key).read_bytes())
            content_type = str(meta.get("content_type") or content_type)
        except (FileNotFoundError, NotADirectoryError, ValueError):
            pass  # crash between object and sidecar writes: the extension's type is a fair guess
        return ObjectInfo(
            key=key,
            size=st.st_size,
            content_type=content_type,
            # like nginx: cheap, changes whenever the object is replaced
            etag=f"{st.st_mtime_ns:x}-{st.st_size:x}",
            modified=datetime.fromtimestamp(st.st_mtime, UTC),
        )

    def _write_sidecar(self, key: str, content_type: str) -> None:
        sidecar = self._sidecar(key)
        ensure_dir(sidecar.parent)
        write_atomic(sidecar, json.dumps({"content_type": content_type}).encode())

    def _put_sync(
        self, key: str, content_type: str | None, src: Path | None, data: bytes
    ) -> ObjectInfo:
        dest = self._path(key)
        ctype = content_type or content_type_for(key)
        try:
            ensure_dir(dest.parent)
            if src is not None:
                place_atomic(src, dest, move=False)
            else:
                write_atomic(dest, data)
            if ctype != content_type_for(key):
                self._write_sidecar(key, ctype)
            elif remove_quietly(self._sidecar(key)):  # the extension's type, as read back
                fsync_dir(self._sidecar(key).parent)
            info = self._info_sync(key)
        except OSError as exc:
            raise _map_os_error(exc, key) from exc
        if info is None:  # deleted concurrently between our write and our stat
            raise StoreUnavailable(f"object {key} vanished right after it was written")
        return info

    def _list_sync(self, prefix: str) -> list[ObjectInfo]:
        # walk only the deepest directory the prefix pins down
        base_rel = prefix.rpartition("/")[0]
        if base_rel:
            validate_key(base_rel)
        base = self.root / base_rel if base_rel else self.root
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            if rel_dir == ".":
                rel_dir = ""
                dirnames[:] = [d for d in dirnames if d != META_DIR]
            for filename in filenames:
                if filename.startswith(TEMP_PREFIX):
                    continue
                key = f"{rel_dir}/{filename}" if rel_dir else filename
                if key.startswith(prefix):
                    keys.append(key)
        keys.sort()  # code-point order equals UTF-8 byte order, the order S3 lists in
        infos = (self._info_sync(key) for key in keys)
        return [info for info in infos if info is not None]

    def _delete_sync(self, key: str) -> None:
        try:
            remove_quietly(self._path(key))
            remove_quietly(self._sidecar(key))
        except IsADirectoryError:
            pass  # a "directory" of other keys is not an object
        except OSError as exc:
            raise _map_os_error(exc, key) from exc

    # the ObjectStore protocol -------------------------------------------------------------

    async def put_file(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo:
        """Store the file at ``path`` under ``key``; the source file stays where it is."""
        validate_key(key)
        return await asyncio.to_thread(self._put_sync, key, content_type, path, b"")

    async def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        """Store ``data`` under ``key``."""
        validate_key(key)
        return await asyncio.to_thread(self._put_sync, key, content_type, None, data)

    async def stream(
        self,
        key: str,
        chunk_size: int = DEFAULT_CHUNK_BYTES,
        start: int = 0,
        end: int | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Yield the object's bytes in chunks read in a worker thread.

        The file is opened once: a reader gets the object as it was when the stream began,
        even if it is replaced or deleted meanwhile (a rename or unlink leaves the open file
        whole). Close the generator (``contextlib.aclosing``) to let the file go at once.
        """
        path = self._path(key)

        def _open() -> int:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                raise ObjectNotFound(key) from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # (a directory opens too)
                os.close(fd)
                raise ObjectNotFound(key)
            return fd

        opening = asyncio.get_running_loop().run_in_executor(None, _open)
        try:
            fd = await asyncio.shield(opening)
        except asyncio.CancelledError:  # the thread goes on: its descriptor is closed after it
            opening.add_done_callback(_close_opened)
            raise
        try:
            offset = start
            while end is None or offset <= end:
                size = chunk_size if end is None else min(chunk_size, end + 1 - offset)
                if not (chunk := await asyncio.to_thread(os.pread, fd, size, offset)):
                    break
                offset += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    async def get_bytes(self, key: str) -> bytes:
        """The whole object in memory: for small objects only."""
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's info, or ``None`` when there is no such key."""
        validate_key(key)
        return await asyncio.to_thread(self._info_sync, key)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""
        for info in await asyncio.to_thread(self._list_sync, prefix):
            yield info

    async def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""
        validate_key(key)
        await asyncio.to_thread(self._delete_sync, key)

    async def presigned_url(
        self, key: str, method: str = "GET", expires_s: int = DEFAULT_PRESIGN_EXPIRY_S
    ) -> str | None:
        """A URL served by the API's object route, or ``None`` when no signer was given."""
        validate_key(key)
        if self._signer is None:
            return None
        return self._signer.sign(key, method, expires_s)

    async def aclose(self) -> None:
        """Nothing to release; present for the protocol."""


def _close_opened(opening: asyncio.Future[int]) -> None:
    """Close the descriptor an open left behind when its reader was cancelled meanwhile."""
    if not opening.cancelled() and opening.exception() is None:
        asyncio.get_running_loop().run_in_executor(None, os.close, opening.result())
