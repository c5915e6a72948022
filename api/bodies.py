"""Request bodies: read whole within a limit, and cut off when they stop coming.

A body that stops coming is cut off: ``[http] body_timeout_s`` without a byte while
its handler waits for one (nginx's ``client_body_timeout``). aiohttp has no such deadline: a
client that sent its headers and part of a body held the handler, its socket and its buffers
for as long as it kept the connection open (``keepalive_timeout_s`` covers headers only).

The read the handler waits on fails with ``408 Request Timeout``, which each API's middleware
answers in its own error shape; the connection is then closed (aiohttp's lingering read of the
rest of the body meets the same error, a ``TimeoutError``, and gives up at once)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler

from .keys import SETTINGS


class BodyTimeout(web.HTTPRequestTimeout, TimeoutError):
    """The body stopped coming: a 408 to the handler's middlewares, a timeout to aiohttp."""


class _Watch:
    """Checks every ``timeout_s`` that the body moved on, or that its handler is not waiting
    for it (bytes still buffered: the server is the slow side, not the client)."""

    def __init__(self, request: web.Request, timeout_s: float) -> None:
        self._request = request
        self._timeout_s = timeout_s
        self._seen = request.content.total_bytes
        self._handle = asyncio.get_running_loop().call_later(timeout_s, self._check)

    def _check(self) -> None:
        content = self._request.content
        if content.is_eof() or content.exception() is not None:
            return  # all in (or failed already): nothing left to wait for
        buffered = getattr(content, "_size", 0)  # (aiohttp's unread bytes; no public name)
        if content.total_bytes == self._seen and not buffered:
            reason = f"no byte of the request body came for {self._timeout_s:g} s"
            content.set_exception(BodyTimeout(reason=reason))
            return
        self._seen = content.total_bytes
        self._handle = asyncio.get_running_loop().call_later(self._timeout_s, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


@web.middleware
async def body_deadline_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Watch the body of every request that has one (WebSockets have none)."""
    timeout_s = request.app[SETTINGS].http.body_timeout_s
    if not request.body_exists or timeout_s <= 0:
        return await handler(request)
    watch = _Watch(request, timeout_s)
    try:
        return await handler(request)
    finally:
        watch.cancel()


async def read_limited(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or ``None`` when it is longer than ``limit`` bytes (read no further).

    ``request.content.read(n)`` returns what has come so far, not ``n`` bytes: a body split
    across TCP segments (headers and body sent apart, any body past one segment) was taken
    by its first part and refused as malformed."""
    if request.content_length is not None and request.content_length > limit:
        return None
    parts: list[bytes] = []
    size = 0
    while chunk := await request.content.read(limit + 1 - size):
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return None
    return b"".join(parts)
