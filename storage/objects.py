"""The object store interface: where finished recordings end up (local disk or S3)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

DEFAULT_CHUNK_BYTES = 256 * 1024
DEFAULT_PRESIGN_EXPIRY_S = 3600

CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".mp4": "video/mp4",
    ".m4s": "video/iso.segment",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webm": "video/webm",
    ".json": "application/json",
    ".gz": "application/gzip",
    ".zst": "application/zstd",
}


def content_type_for(key: str) -> str:
    """The content type a key's extension implies, ``application/octet-stream`` otherwise."""
    dot = key.rfind(".")
    return (
        CONTENT_TYPES.get(key[dot:].lower(), "application/octet-stream")
        if dot >= 0
        else ("application/octet-stream")
    )


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a store knows of one stored object."""

    key: str
    size: int
    content_type: str
    etag: str
    modified: datetime


class ObjectStore(Protocol):
    """A flat key → bytes store; keys use ``/`` as a separator and never start with one.

    Every method raises a :class:`storage.errors.StorageError` subclass on failure:
    ``ObjectNotFound`` for a missing key, ``StoreRefused`` when the store says no,
    ``StoreUnavailable`` when it cannot be reached.
    """

    name: str

    async def put_file(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo:
        """Store the file at ``path`` under ``key`` (replacing any object there)."""
        ...

    async def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        """Store ``data`` under ``key``."""
        ...

    def stream(
        self,
        key: str,
        chunk_size: int = DEFAULT_CHUNK_BYTES,
        start: int = 0,
        end: int | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Yield the object's bytes in chunks, those from ``start`` to ``end`` (inclusive, as an
        HTTP range; None: to the end) when given; raises ``ObjectNotFound`` on first iteration."""
        ...

    async def get_bytes(self, key: str) -> bytes:
        """The whole object in memory: for small objects only."""
        ...

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's info, or ``None`` when there is no such key."""
        ...

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""
        ...

    async def presigned_url(
        self, key: str, method: str = "GET", expires_s: int = DEFAULT_PRESIGN_EXPIRY_S
    ) -> str | None:
        """A URL granting ``method`` on ``key`` without credentials, or ``None`` if unsupported."""
        ...

    async def aclose(self) -> None:
        """Release connections; calling it twice is harmless."""
        ...
