"""``/v1/objects/{key}``: presigned GET and PUT of the local object store's files (S3 serves
its own presigned URLs)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

from aiohttp import web

from ingest.errors import RpcCode
from storage.errors import ObjectNotFound
from storage.objects import ObjectInfo, ObjectStore

from .bodies import ACCEPT_ENCODING, coding_refused, expect_checked, readable_body
from .cors import objects_preflight
from .errors import rpc_error, rpc_status
from .keys import SETTINGS, SIGNER, STORE

# A presigned PUT (a recording's tab video) may carry this much; larger gets 413. The body is
# streamed to a file in chunks, never held in memory.
MAX_PUT_BYTES = 4 * 1024**3
PUT_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PutRefusal:
    """Why a presigned PUT may not land; ``owner_gone``: what the key belonged to is deleted,
    so an object stored under it meanwhile is an orphan to take back."""

    reason: str
    owner_gone: bool = False


# Says whether a presigned PUT of a key may still land (e.g. its recording not deleted, its
# video not in yet); by key prefix. Asked before the body is read, again before it is stored,
# and once more after: an object whose owner was deleted meanwhile is taken back. (One stored
# while its owner moved on is kept: it replaced what was there, and deleting it would lose
# that too.)
PutGuard = Callable[[web.Application, str], Awaitable[PutRefusal | None]]  # None: it may
PUT_GUARDS: web.AppKey[dict[str, PutGuard]] = web.AppKey("put_guards")


def add_routes(app: web.Application) -> None:
    """Register the object routes."""
    app.router.add_get("/v1/objects/{key:.+}", get_object)
    app.router.add_route("OPTIONS", "/v1/objects/{key:.+}", objects_preflight)
    app.router.add_put("/v1/objects/{key:.+}", put_object, expect_handler=expect_checked(_may_put))


def _verify(request: web.Request, method: str) -> str:
    key = request.match_info["key"]
    q = request.query
    try:
        expires = int(q.get("expires", ""))
    except ValueError:
        raise rpc_error(RpcCode.PERMISSION_DENIED, "missing or malformed signature") from None
    if q.get("method", "").upper() != method or not request.app[SIGNER].verify(
        key, method, expires, q.get("signature", "")
    ):
        raise rpc_error(RpcCode.PERMISSION_DENIED, "invalid or expired signature")
    return key


PLAYLIST_TYPE = "application/vnd.apple.mpegurl"


def absolute_url(request: web.Request, url: str) -> str:
    """``url`` as clients reach it: a relative one gets the public URL or the request's origin."""
    if "://" in url:
        return url
    base = request.config_dict[SETTINGS].http.public_url.rstrip("/")
    return (base or str(request.url.origin())) + url


async def presigned_playlist(
    request: web.Request, store: ObjectStore, key: str, text: str, expires_s: int
) -> str:
    """``text``, the HLS playlist stored at ``key``, with every relative segment URI made a
    presigned GET URL of that object for ``expires_s``: a player then needs no credential and no
    signature of its own. (reelhouse's playlists name MPEG-TS segments beside them only, no
    ``URI=`` tags: a line with a path or a URL is left as it is.)"""
    folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#") and "/" not in line and line not in (".", ".."):
            url = await store.presigned_url(folder + line.strip(), "GET", expires_s)
            line = line if url is None else absolute_url(request, url)
        out.append(line)
    return "\n".join(out) + "\n"


async def get_object(request: web.Request) -> web.StreamResponse:
    """Stream an object to a holder of a valid presigned URL. An HLS playlist comes with its
    segments as presigned URLs valid as long as the playlist's own, so the link plays."""
    key = _verify(request, "GET")
    store = request.app[STORE]
    if key.endswith(".m3u8"):
        try:
            text = (await store.get_bytes(key)).decode()
        except ObjectNotFound:
            raise rpc_error(RpcCode.NOT_FOUND, f"object {key} not found") from None
        expires_s = max(1, int(request.query["expires"]) - int(time.time()))
        body = await presigned_playlist(request, store, key, text, expires_s)
        return web.Response(
            text=body, content_type=PLAYLIST_TYPE, headers={"Cache-Control": "no-store"}
        )
    info = await store.head(key)
    if info is None:
        raise rpc_error(RpcCode.NOT_FOUND, f"object {key} not found")
    etag = f'"{info.etag}"'
    headers = {
        "Content-Type": info.content_type,
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Last-Modified": formatdate(info.modified.timestamp(), usegmt=True),
        # (kept, and asked about again: a key's object can be replaced, a tab video's PUT)
        "Cache-Control": "no-cache",
        # (a presigned PUT names its own type: a browser must not take an upload for a page)
        "X-Content-Type-Options": "nosniff",
    }
    if unchanged(request, info):  # the client's copy is this one (a cache revalidating)
        del headers["Content-Type"]
        return web.Response(status=304, headers=headers)
    start, end, status = 0, info.size - 1, 200
    if request.headers.get("If-Range", etag) == etag:  # (else it changed: the whole object)
        try:
            span = byte_range(request, info.size)
        except Unsatisfiable:  # (its answer says the size, for the next try)
            return web.Response(status=416, headers={"Content-Range": f"bytes */{info.size}"})
        if span is not None:
            (start, end), status = span, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    headers["Content-Length"] = str(end + 1 - start)
    resp = web.StreamResponse(status=status, headers=headers)
    await resp.prepare(request)
    if end < start or request.method == "HEAD":  # (an empty object; no body to send)
        await resp.write_eof()
        return resp
    try:
        ranged = store.stream(key, start=start, end=end)
        async with contextlib.aclosing(ranged) as chunks:  # closed on a disconnect too
            async for chunk in chunks:
                await resp.write(chunk)
    except ObjectNotFound:
        pass  # deleted mid-stream: the length check on the client side tells
    await resp.write_eof()
    return resp


def unchanged(request: web.Request, info: ObjectInfo) -> bool:
    """The request's ``If-None-Match`` names the object's ETag (weakly, or ``*``), or, without
    one, its ``If-Modified-Since`` is no earlier than the object's time (RFC 9110 13.1.2-3),
    in whole seconds (``Last-Modified``'s); a date in the future is not valid, and ignored.
    (Two versions stored in one second look the same to a date: their ETags differ.)"""
    if (tags := request.if_none_match) is not None:
        return any(tag.value in (info.etag, "*") for tag in tags)
    since = request.if_modified_since
    if since is None or since.timestamp() > time.time():
        return False
    return int(info.modified.timestamp()) <= since.timestamp()


class Unsatisfiable(ValueError):
    """A ``Range`` that starts past the object's end: 416."""


def byte_range(request: web.Request, size: int) -> tuple[int, int] | None:
    """The first and last byte (inclusive) the request's one ``Range`` asks of an object of
    ``size`` bytes (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``, parsed by aiohttp); None for
    none, or one to ignore (not understood, or several ranges: a server may send the whole
    object, and players ask for one); :class:`Unsatisfiable` for one past the end."""
    try:
        asked = request.http_range
    except ValueError:
        return None
    start, stop = asked.start, asked.stop
    if start is None:
        return None
    if start < 0:  # the last -start bytes
        if size == 0:
            raise Unsatisfiable(request.headers["Range"])
        return max(0, size + start), size - 1
    if start >= size:
        raise Unsatisfiable(request.headers["Range"])
    return start, size - 1 if stop is None else min(stop - 1, size - 1)


def _too_large() -> web.HTTPException:
    return rpc_error(RpcCode.INVALID_ARGUMENT, f"object larger than {MAX_PUT_BYTES} bytes")


def _set_413(exc: web.HTTPException) -> web.HTTPException:
    exc.set_status(413)
    return exc


async def _refusal(app: web.Application, key: str) -> PutRefusal | None:
    for prefix, guard in app.get(PUT_GUARDS, {}).items():
        if key.startswith(prefix):
            return await guard(app, key)
    return None


async def _admitted(request: web.Request) -> str:
    """The key a PUT may store its body under: its signature, its key's guard and its
    announced size checked (an HTTPException in the ``rpcStatus`` shape when not)."""
    key = _verify(request, "PUT")
    if (refused := await _refusal(request.app, key)) is not None:
        raise rpc_error(RpcCode.FAILED_PRECONDITION, refused.reason)
    if request.content_length is not None and request.content_length > MAX_PUT_BYTES:
        raise _set_413(_too_large())
    return key


async def _may_put(request: web.Request) -> web.Response | None:
    """Whether a PUT's body may come (``Expect: 100-continue``; before the middlewares)."""
    try:
        await _admitted(request)
    except web.HTTPException as exc:
        return web.Response(status=exc.status, text=exc.text, content_type="application/json")
    if (reason := coding_refused(request)) is not None:  # (before the body, not after it)
        body = rpc_status(RpcCode.INVALID_ARGUMENT, reason)
        return web.json_response(body, status=415, headers=ACCEPT_ENCODING)
    return None


async def put_object(request: web.Request) -> web.Response:
    """Store the body under the key for a holder of a valid presigned PUT URL."""
    key = await _admitted(request)
    tmp_dir = request.app[SETTINGS].data_dir / "tmp"
    await asyncio.to_thread(tmp_dir.mkdir, parents=True, exist_ok=True)
    path = tmp_dir / f"put-{uuid.uuid4().hex}"
    try:
        await _receive(request, path)
        if (refused := await _refusal(request.app, key)) is not None:  # (changed while it came)
            raise rpc_error(RpcCode.FAILED_PRECONDITION, refused.reason)
        content_type = request.headers.get("Content-Type") or None
        info = await request.app[STORE].put_file(key, path, content_type)
    finally:
        await asyncio.to_thread(_unlink, path)
    if (refused := await _refusal(request.app, key)) is not None and refused.owner_gone:
        await request.app[STORE].delete(key)
        raise rpc_error(RpcCode.FAILED_PRECONDITION, refused.reason)
    return web.Response(status=200, headers={"ETag": f'"{info.etag}"'})


async def _receive(request: web.Request, path: Path) -> None:
    size = 0
    await asyncio.to_thread(path.write_bytes, b"")
    with readable_body(request):
        async for chunk in request.content.iter_chunked(PUT_CHUNK_BYTES):
            size += len(chunk)
            if size > MAX_PUT_BYTES:
                raise _set_413(_too_large())
            await asyncio.to_thread(_append, path, chunk)


def _append(path: Path, data: bytes) -> None:
    # opened and closed per chunk: a client gone mid-upload leaves no open file behind
    with open(path, "ab") as f:
        f.write(data)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
