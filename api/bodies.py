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
import contextlib
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestPayloadError
from aiohttp.web_urldispatcher import _default_expect_handler

from .keys import SETTINGS

# content codings of a request body that aiohttp decodes (others it hands on as they came)
DECODED_CODINGS = ("gzip", "deflate") + ("br",) * HAS_BROTLI + ("zstd",) * HAS_ZSTD


ACCEPT_ENCODING = {"Accept-Encoding": ", ".join(DECODED_CODINGS)}


def coding_refused(request: web.Request) -> str | None:
    """Why the body's content coding is refused here (``None``: it is read as it should be).

    aiohttp decodes a body only when the coding is exactly one of ``DECODED_CODINGS``, and
    reads any other (``compress``, a list such as ``gzip, identity``, a misspelt one) as if
    it were not coded: compressed bytes then failed as "not valid JSON", or were stored as a
    video's bytes. Several ``Content-Encoding`` lines make a list too (RFC 9110 5.3), of which
    aiohttp would decode one at most."""
    values = [v.strip().lower() for v in request.headers.getall("Content-Encoding", [])]
    if all(v in ("", "identity") for v in values):
        return None
    if len(values) == 1 and values[0] in DECODED_CODINGS:
        return None
    said = ", ".join(values)[:40]
    return (
        f"Content-Encoding {said!r} is not supported here: send the body as it is, or in "
        f"one of {', '.join(DECODED_CODINGS)}"
    )


def check_coding(request: web.Request) -> None:
    """Refuse a body whose coding is not decoded here (:func:`coding_refused`): 415 naming
    the codings that are (RFC 9110 15.5.16, ``Accept-Encoding``)."""
    if (reason := coding_refused(request)) is not None:
        raise web.HTTPUnsupportedMediaType(reason=reason, headers=ACCEPT_ENCODING)


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
async def bodies_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Watch the body of every request that has one (WebSockets have none) for its deadline,
    and close the connection after one that could not be read (:func:`readable_body`)."""
    if not request.body_exists:
        return await handler(request)
    watch = _Watch(request, request.app[SETTINGS].http.body_timeout_s)
    try:
        response = await handler(request)
    finally:
        watch.cancel()
    if request.get(_UNREADABLE):
        response.force_close()
    return response


async def read_limited(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or ``None`` when it is longer than ``limit`` bytes (read no further).

    ``request.content.read(n)`` returns what has come so far, not ``n`` bytes: a body split
    across TCP segments (headers and body sent apart, any body past one segment) was taken
    by its first part and refused as malformed."""
    check_coding(request)
    if request.content_length is not None and request.content_length > limit:
        return None
    parts: list[bytes] = []
    size = 0
    with readable_body(request):
        while chunk := await request.content.read(limit + 1 - size):
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                return None
    return b"".join(parts)


# set on a request whose body could not be read: its answer closes the connection
_UNREADABLE = web.RequestKey("unreadable_body", bool)


@contextlib.contextmanager
def readable_body(request: web.Request) -> Iterator[None]:
    """Reads of ``request``'s body within: one aiohttp cannot read (a ``Content-Encoding:
    gzip`` body that is not gzip, a broken chunked framing) is a 400 in the API's error shape,
    and its connection is closed after the answer (what follows on it cannot be framed);
    it was an unhandled error, a 500 and a traceback in the log for each such request.
    A body in a coding not decoded here is refused first (:func:`check_coding`)."""
    check_coding(request)
    try:
        yield
    except (RequestPayloadError, BadHttpMessage) as exc:
        cause = exc.__cause__ or exc
        said = getattr(cause, "message", None) or str(cause)
        request[_UNREADABLE] = True
        request.content.feed_eof()  # (nothing more of it is read: aiohttp would, and fail)
        raise web.HTTPBadRequest(reason=f"the request body cannot be read: {said}") from None


ExpectCheck = Callable[[web.Request], Awaitable[web.Response | None]]


def expect_checked(check: ExpectCheck) -> Callable[[web.Request], Awaitable[web.Response | None]]:
    """An ``expect_handler`` for a route that takes large bodies: ``Expect: 100-continue`` is
    answered ``100 Continue`` only once ``check`` (the credential, the size) passes; else its
    refusal goes at once and the body is never sent. aiohttp's own answers 100 before any
    check, so a client began a 4 GiB upload only to be refused."""

    async def handler(request: web.Request) -> web.Response | None:
        if (refused := await check(request)) is not None:
            request.content.feed_eof()  # (no body comes: the connection closes after it)
            refused.force_close()
            return refused
        await _default_expect_handler(request)
        return None

    return handler
