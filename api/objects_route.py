"""``/v1/objects/{key}``: presigned GET of the local object store's files."""

from __future__ import annotations

import contextlib

from aiohttp import web

from ingest.errors import RpcCode
from storage.errors import ObjectNotFound

from .errors import rpc_error
from .keys import SIGNER, STORE


def add_routes(app: web.Application) -> None:
    """Register the object routes."""
    app.router.add_get("/v1/objects/{key:.+}", get_object)


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


async def get_object(request: web.Request) -> web.StreamResponse:
    """Stream an object to a holder of a valid presigned URL."""
    key = _verify(request, "GET")
    store = request.app[STORE]
    info = await store.head(key)
    if info is None:
        raise rpc_error(RpcCode.NOT_FOUND, f"object {key} not found")
    resp = web.StreamResponse(
        headers={"Content-Type": info.content_type, "Content-Length": str(info.size)}
    )
    await resp.prepare(request)
    try:
        async with contextlib.aclosing(store.stream(key)) as chunks:  # closed on a disconnect too
            async for chunk in chunks:
                await resp.write(chunk)
    except ObjectNotFound:
        pass  # deleted mid-stream: the length check on the client side tells
    await resp.write_eof()
    return resp
