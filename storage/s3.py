"""The S3 object store on aioboto3: Amazon S3 and every S3-compatible service.

One client per store, opened on first use and kept: botocore builds a client from JSON
models on disk, so the first build of the process is done in a worker thread
(:func:`warm_up`) and later builds only hit its caches. Errors are mapped onto the storage
layer's three kinds (``storage.s3_errors``).

Writes are conditional (``If-None-Match: *``, or ``If-Match`` the ETag this store last wrote
under the key). A request the client gave up on (a timeout, a lost answer) can still be
carried out by the service later, after a newer version of the same key went up: a
playlist then reverted to an old one. Its condition no longer holds by then, so the
service refuses it instead (see :meth:`S3ObjectStore._put_object`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import ClientError

from .errors import ObjectNotFound, StorageError, StoreRefused, StoreUnavailable
from .objects import DEFAULT_CHUNK_BYTES, DEFAULT_PRESIGN_EXPIRY_S, ObjectInfo, content_type_for
from .objects_local import validate_key
from .presign import MAX_EXPIRY_S
from .s3_errors import map_error

log = logging.getLogger(__name__)

MIN_PART_BYTES = 5 * 1024**2  # S3's floor for every part but the last
MAX_PARTS = 10_000  # S3's ceiling on parts per upload
ADDRESSING_STYLES = ("auto", "path", "virtual")
SSE_MODES = ("AES256", "aws:kms")
CHECK_KEY = ".reelhouse-write-check"  # the check's probe object (never listed)
# the slowest upload taken as alive (``S3ObjectStore._deadline_s``)
MIN_UPLOAD_BYTES_PER_S = 64 * 1024
ETAGS_REMEMBERED = 8192  # keys whose ETag a store keeps for conditional overwrites
CONDITION_TRIES = 4  # tries of one write (a key changed by another writer: retry later)


@dataclass(frozen=True, slots=True)
class S3Config:
    """Where and how to reach one bucket; ``prefix`` is put before every key."""

    bucket: str
    region: str = "us-east-1"
    endpoint_url: str | None = None  # None: the AWS endpoint of ``region``
    public_endpoint_url: str | None = None  # presigned URLs name this host (None: the same)
    access_key: str = ""  # empty: botocore's usual chain (env, instance role, ...)
    secret_key: str = field(default="", repr=False)
    session_token: str | None = field(default=None, repr=False)
    session_expiration: int | None = None  # unix seconds after which the token is dead
    addressing_style: str = "auto"
    prefix: str = ""  # "dir1/dir2/": keys are stored as prefix + key
    sse: str | None = None  # "AES256" or "aws:kms"
    tagging: str | None = None  # URL-encoded "k=v&k2=v2", applied to every object
    multipart_threshold_bytes: int = 16 * 1024**2
    multipart_part_bytes: int = 8 * 1024**2
    multipart_concurrency: int = 4
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_attempts: int = 2  # botocore's own retries; the spool retries on top with backoff
    max_pool_connections: int = 32

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("S3 bucket must not be empty")
        if self.addressing_style not in ADDRESSING_STYLES:
            raise ValueError(f"addressing_style must be one of {ADDRESSING_STYLES}")
        if self.sse is not None and self.sse not in SSE_MODES:
            raise ValueError(f"sse must be one of {SSE_MODES}")
        if self.prefix and (self.prefix.startswith("/") or not self.prefix.endswith("/")):
            raise ValueError("prefix must not start with '/' and must end with '/'")
        if self.multipart_part_bytes < MIN_PART_BYTES:
            raise ValueError(f"multipart_part_bytes must be at least {MIN_PART_BYTES}")
        if self.multipart_threshold_bytes < self.multipart_part_bytes:
            raise ValueError("multipart_threshold_bytes must be at least multipart_part_bytes")
        if self.multipart_concurrency < 1 or self.max_attempts < 1:
            raise ValueError("multipart_concurrency and max_attempts must be at least 1")

    def describe(self) -> str:
        """Where this store writes, for logs and errors (never the secrets)."""
        where = self.endpoint_url or f"aws:{self.region}"
        return f"s3://{self.bucket}/{self.prefix} at {where}"


# client construction ---------------------------------------------------------------------

_session: aioboto3.Session | None = None


def _build_session() -> aioboto3.Session:
    """A session with what botocore reads from disk to build an S3 client already loaded."""
    session = aioboto3.Session()
    core = session._session  # the aiobotocore session aioboto3 wraps
    for module in ("s3transfer.manager", "aioboto3.s3.inject", "aiobotocore.httpsession"):
        importlib.import_module(module)  # imported lazily at client build otherwise
    core.get_scoped_config()  # reads ~/.aws/config once
    core._get_internal_component("endpoint_resolver")
    loader = core.get_component("data_loader")
    for name in ("sdk-default-configuration", "partitions", "_retry"):
        loader.load_data(name)
    for type_name in ("service-2", "endpoint-rule-set-1", "paginators-1"):
        loader.load_service_model("s3", type_name)
    return session


async def warm_up() -> aioboto3.Session:
    """The process's shared session, its disk reads done once in a worker thread."""
    global _session
    if _session is None:  # two racing first calls both build one: harmless, and no lock
        _session = await asyncio.to_thread(_build_session)  # to outlive an event loop
    return _session


async def _md5(data: bytes) -> str:
    """The hex MD5 of ``data`` (a single-part object's ETag), large bodies off the loop."""
    if len(data) <= 1 << 20:
        return hashlib.md5(data, usedforsecurity=False).hexdigest()
    return await asyncio.to_thread(lambda: hashlib.md5(data, usedforsecurity=False).hexdigest())


class S3ObjectStore:
    """An ``ObjectStore`` on one bucket (and key prefix) of an S3-compatible service."""

    name = "s3"

    def __init__(self, config: S3Config) -> None:
        self.config = config
        self._client: Any = None
        self._presigner: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._open_lock = asyncio.Lock()
        self._closed = False
        # full key → the ETag (quoted, as sent) of what this store last wrote or saw there;
        # oldest forgotten first: a forgotten key only costs a HEAD at its next overwrite
        self._etags: OrderedDict[str, str] = OrderedDict()
        self._conditional = True  # False once the service says it has no conditional writes

    # lifecycle ---------------------------------------------------------------------------

    async def _get_client(self, *, public: bool = False) -> Any:
        """The client; ``public``: the one presigning with the host clients reach."""
        public = public and bool(self.config.public_endpoint_url)
        client = self._presigner if public else self._client
        if client is not None:
            return client
        async with self._open_lock:  # one client each, however many callers race here
            if self._closed:
                raise StoreUnavailable(f"store for {self.config.describe()} is closed")
            client = self._presigner if public else self._client
            if client is None:
                cfg = self.config
                client = await self._stack.enter_async_context(
                    (await warm_up()).client(
                        "s3",
                        region_name=cfg.region,
                        endpoint_url=cfg.public_endpoint_url if public else cfg.endpoint_url,
                        aws_access_key_id=cfg.access_key or None,
                        aws_secret_access_key=cfg.secret_key or None,
                        aws_session_token=cfg.session_token,
                        config=Config(
                            signature_version="s3v4",
                            s3={"addressing_style": cfg.addressing_style},
                            connect_timeout=cfg.connect_timeout_s,
                            read_timeout=cfg.read_timeout_s,
                            retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
                            max_pool_connections=cfg.max_pool_connections,
                        ),
                    )
                )
                if public:
                    self._presigner = client
                else:
                    self._client = client
        return client

    async def aclose(self) -> None:
        """Close the client's connections; calling it twice is harmless."""
        async with self._open_lock:
            if self._closed:
                return
            self._closed = True
            self._client = self._presigner = None
        await self._stack.aclose()

    def _key(self, key: str) -> str:
        return self.config.prefix + validate_key(key, max_segment_bytes=None)

    def _check_token(self, what: str) -> None:
        expiry = self.config.session_expiration
        if expiry is not None and datetime.now(UTC).timestamp() >= expiry:
            raise StoreRefused(
                f"{what}: the STS token for {self.config.describe()} expired at "
                f"{datetime.fromtimestamp(expiry, UTC).isoformat()}; send a new one",
                code="ExpiredToken",
            )

    def _put_extra(self, content_type: str) -> dict[str, str]:
        extra = {"ContentType": content_type}
        if self.config.sse is not None:
            extra["ServerSideEncryption"] = self.config.sse
        if self.config.tagging:
            extra["Tagging"] = self.config.tagging
        return extra

    async def check(self) -> None:
        """Prove the bucket exists and the credentials may write to it, or raise.

        A probe object is written (and deleted again where the policy allows): a listing
        proves only that keys may read, and keys that list but may not write (a recorder's
        wrong or read-only keys) passed it, every file then waiting in the spool for a stop.
        """
        self._check_token("check")
        probe = self.config.prefix + CHECK_KEY
        try:
            client = await self._get_client()
            await client.put_object(
                Bucket=self.config.bucket,
                Key=probe,
                Body=b"",
                **self._put_extra("application/octet-stream"),
            )
        except Exception as exc:
            raise map_error(exc, "check (write)", self.config) from exc
        with contextlib.suppress(Exception):  # (write-only keys may not delete: left, unlisted)
            await client.delete_object(Bucket=self.config.bucket, Key=probe)

    # the ObjectStore protocol -------------------------------------------------------------

    async def put_file(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo:
        """Upload the file at ``path``; multipart past ``multipart_threshold_bytes``."""
        full = self._key(key)
        ctype = content_type or content_type_for(key)
        self._check_token(f"put {key}")
        try:
            size = (await asyncio.to_thread(os.stat, path)).st_size
        except FileNotFoundError:
            raise StoreRefused(f"put {key}: source file {path} is missing") from None
        try:
            if size > self.config.multipart_threshold_bytes:
                etag = await self._put_multipart(full, path, size, ctype)
            else:
                etag = await self._put_object(full, await asyncio.to_thread(path.read_bytes), ctype)
        except Exception as exc:
            raise map_error(exc, f"put {key}", self.config) from exc
        return ObjectInfo(key, size, ctype, etag, datetime.now(UTC))

    async def _put_multipart(self, full: str, path: Path, size: int, ctype: str) -> str:
        client = await self._get_client()
        bucket = self.config.bucket
        part_bytes = max(self.config.multipart_part_bytes, -(-size // MAX_PARTS))
        async with asyncio.timeout(self._deadline_s(0)):
            created = await client.create_multipart_upload(
                Bucket=bucket, Key=full, **self._put_extra(ctype)
            )
        upload_id = created["UploadId"]
        parts: dict[int, str] = {}
        offsets = list(range(0, size, part_bytes))
        gate = asyncio.Semaphore(self.config.multipart_concurrency)

        def read_part(offset: int) -> bytes:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(part_bytes)

        async def upload(number: int, offset: int) -> None:
            async with gate:  # at most this many parts in memory at once
                body = await asyncio.to_thread(read_part, offset)
                async with asyncio.timeout(self._deadline_s(len(body))):
                    resp = await client.upload_part(
                        Bucket=bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=body
                    )
                parts[number] = str(resp["ETag"])

        try:
            async with asyncio.TaskGroup() as group:
                for number, offset in enumerate(offsets, start=1):
                    group.create_task(upload(number, offset))
            async with asyncio.timeout(self._deadline_s(0)):
                done = await client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={
                        "Parts": [{"PartNumber": n, "ETag": parts[n]} for n in sorted(parts)]
                    },
                )
        except BaseException as exc:
            # parts of an unfinished upload are billed until aborted
            try:
                async with asyncio.timeout(self._deadline_s(0)):
                    await client.abort_multipart_upload(Bucket=bucket, Key=full, UploadId=upload_id)
            except Exception as abort_exc:  # (the endpoint is what failed, most likely)
                log.warning(
                    "multipart upload %s of %s left to abort: %r", upload_id, full, abort_exc
                )
            if isinstance(exc, BaseExceptionGroup):
                raise exc.exceptions[0] from exc
            raise
        etag = str(done.get("ETag", ""))
        self._remember(full, etag or None)
        return etag.strip('"')

    async def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        """Upload ``data`` in one request."""
        full = self._key(key)
        ctype = content_type or content_type_for(key)
        self._check_token(f"put {key}")
        try:
            etag = await self._put_object(full, data, ctype)
        except Exception as exc:
            raise map_error(exc, f"put {key}", self.config) from exc
        return ObjectInfo(key, len(data), ctype, etag, datetime.now(UTC))

    async def _put_object(self, full: str, data: bytes, ctype: str) -> str:
        """PUT ``data`` at ``full`` if the key still holds what this store last put there
        (nothing, for a key it has not written); the new ETag, unquoted.

        The condition makes a late request harmless: one this store gave up on (it timed
        out, or its answer was lost) that the service carries out after a newer version of
        the key went up finds the key changed, and is refused. What the store itself meets:

        * 412 (409 on Amazon S3 when another write raced it): the key's ETag is read. These
          very bytes there (an earlier attempt of this write landed) mean done; anything else
          (an object from before a restart, another writer) is replaced on that condition.
          Keys that may not read put that write plainly.
        * 404 to ``If-Match`` (Amazon S3's answer when the key is gone: deleted behind this
          store, or by a delete whose answer was lost): written as a new key.
        * 403 or 501: the condition itself may be what is refused (Amazon S3 wants
          ``s3:GetObject`` for ``If-Match``; a service without conditional writes says
          ``NotImplemented``). The write is tried plainly; if that passes, this store writes
          plainly from now on (said once in the log), else its refusal is the answer.
        """
        client = await self._get_client()
        plain = not self._conditional
        suspect = ""  # why this write went plain: the condition may be what is refused
        for _ in range(CONDITION_TRIES):
            condition = {} if plain else self._condition(full)
            try:
                async with asyncio.timeout(self._deadline_s(len(data))):
                    resp = await client.put_object(
                        Bucket=self.config.bucket,
                        Key=full,
                        Body=data,
                        **self._put_extra(ctype),
                        **condition,
                    )
            except ClientError as exc:
                if not condition:
                    raise
                code = str(exc.response.get("Error", {}).get("Code") or "")
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
                if "IfMatch" in condition and status == 404 and code != "NoSuchBucket":
                    self._remember(full, None)
                    continue
                if status in (403, 501):
                    plain, suspect = True, code or str(status)
                    continue
                if status not in (409, 412):
                    raise
                try:
                    current = await self._etag_now(full)
                except StoreRefused:
                    plain = True
                    continue
                if current is not None and current.strip('"') == await _md5(data):
                    return current.strip('"')  # an earlier attempt of this write landed
                continue  # (``_etag_now`` remembered what is there: replace that)
            if suspect and self._conditional:
                self._conditional = False
                log.warning(
                    "%s refuses conditional writes (%s), not plain ones: its writes are plain "
                    "from now on, and a request given up on can land after a newer version "
                    "of its key",
                    self.config.describe(),
                    suspect,
                )
            etag = str(resp.get("ETag", ""))
            self._remember(full, etag or None)
            return etag.strip('"')
        raise StoreUnavailable(
            f"put {full}: changed by another writer {CONDITION_TRIES} times while being written",
            code="PreconditionFailed",
        )

    def _condition(self, full: str) -> dict[str, str]:
        etag = self._etags.get(full)
        return {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}

    def _remember(self, full: str, etag: str | None) -> None:
        """Note what ``full`` holds now (``None``: nothing, or not known)."""
        if etag is None:
            self._etags.pop(full, None)
            return
        self._etags[full] = etag
        self._etags.move_to_end(full)
        while len(self._etags) > ETAGS_REMEMBERED:
            self._etags.popitem(last=False)

    async def _etag_now(self, full: str) -> str | None:
        """The key's ETag as the service has it now (``None``: absent), remembered."""
        head = await self._head(full, f"head {full}")
        etag = (str(head.get("ETag", "")) or None) if head is not None else None
        self._remember(full, etag)
        return etag

    async def _head(self, full: str, what: str) -> dict[str, Any] | None:
        """The HEAD of ``full`` (``None``: no such key), within a request's deadline."""
        try:
            client = await self._get_client()
            async with asyncio.timeout(self._deadline_s(0)):
                head: dict[str, Any] = await client.head_object(Bucket=self.config.bucket, Key=full)
        except Exception as exc:
            error = map_error(exc, what, self.config)
            if isinstance(error, ObjectNotFound):
                return None
            raise error from exc
        return head

    def _deadline_s(self, body_bytes: int) -> float:
        """How long one request may take at most: its timeouts, plus its body at the slowest
        rate taken as alive. botocore's ``Expect: 100-continue`` wait and the body's writes
        have no timeout of their own: an endpoint that accepts and never answers held a
        spool worker for ever."""
        cfg = self.config
        return cfg.connect_timeout_s + cfg.read_timeout_s + body_bytes / MIN_UPLOAD_BYTES_PER_S

    async def stream(
        self,
        key: str,
        chunk_size: int = DEFAULT_CHUNK_BYTES,
        start: int = 0,
        end: int | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Yield the object's bytes as they arrive (from ``start`` to ``end`` inclusive, a
        ``Range`` of the GET, when given); one response held open while iterating."""
        full = self._key(key)
        last = "" if end is None else str(end)
        ranged = {} if start == 0 and end is None else {"Range": f"bytes={start}-{last}"}
        try:
            client = await self._get_client()
            resp = await client.get_object(Bucket=self.config.bucket, Key=full, **ranged)
        except Exception as exc:
            raise map_error(exc, f"get {key}", self.config) from exc
        body = resp["Body"]
        try:
            while True:
                try:
                    chunk = await body.read(chunk_size)
                except Exception as exc:
                    raise map_error(exc, f"get {key}", self.config) from exc
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    async def get_bytes(self, key: str) -> bytes:
        """The whole object in memory: for small objects only."""
        return b"".join([chunk async for chunk in self.stream(key)])

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's info, or ``None`` when there is no such key."""
        resp = await self._head(self._key(key), f"head {key}")
        if resp is None:
            return None
        return ObjectInfo(
            key=key,
            size=int(resp.get("ContentLength", 0)),
            content_type=str(resp.get("ContentType") or content_type_for(key)),
            etag=str(resp.get("ETag", "")).strip('"'),
            modified=resp.get("LastModified") or datetime.now(UTC),
        )

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order (pages as they come)."""
        strip = len(self.config.prefix)
        try:
            client = await self._get_client()
            paginator = client.get_paginator("list_objects_v2")
            pages = paginator.paginate(
                Bucket=self.config.bucket, Prefix=self.config.prefix + prefix
            )
            async for page in pages:
                for entry in page.get("Contents", ()):
                    key = str(entry["Key"])[strip:]
                    if key == CHECK_KEY:
                        continue
                    yield ObjectInfo(
                        key=key,
                        size=int(entry.get("Size", 0)),
                        content_type=content_type_for(key),  # listings carry no type
                        etag=str(entry.get("ETag", "")).strip('"'),
                        modified=entry.get("LastModified") or datetime.now(UTC),
                    )
        except StorageError:
            raise
        except Exception as exc:
            raise map_error(exc, f"list {prefix!r}", self.config) from exc

    async def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error (S3 says so too)."""
        full = self._key(key)
        self._remember(full, None)  # (before: a lost answer may hide a delete that was done)
        try:
            client = await self._get_client()
            await client.delete_object(Bucket=self.config.bucket, Key=full)
        except Exception as exc:
            error = map_error(exc, f"delete {key}", self.config)
            if not isinstance(error, ObjectNotFound):
                raise error from exc

    async def presigned_url(
        self, key: str, method: str = "GET", expires_s: int = DEFAULT_PRESIGN_EXPIRY_S
    ) -> str | None:
        """A SigV4 URL granting GET or PUT on ``key`` for ``expires_s`` seconds."""
        operations = {"GET": "get_object", "PUT": "put_object", "HEAD": "head_object"}
        method = method.upper()
        if method not in operations:
            raise ValueError(f"presigned URLs are for {sorted(operations)}, not {method}")
        if not 0 < expires_s <= MAX_EXPIRY_S:
            raise ValueError(f"expires_s must be in 1..{MAX_EXPIRY_S}")
        full = self._key(key)
        try:
            client = await self._get_client(public=True)
            url = await client.generate_presigned_url(
                operations[method],
                Params={"Bucket": self.config.bucket, "Key": full},
                ExpiresIn=expires_s,
            )
        except Exception as exc:
            raise map_error(exc, f"presign {key}", self.config) from exc
        return str(url)
