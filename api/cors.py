"""CORS (Fetch standard) for the routes a page of another origin calls: WHIP publishing, and
presigned object links (hls.js or a `<video>` fetching a recording's playlist, segments and
MP4 by ranges; a browser extension uploading a tab video). Each needs no cookie: WHIP takes a
bearer token, an object link is its own credential, so any origin may call them.

The headers are set when a response is prepared (``on_response_prepare``): a streamed
object's headers leave before its handler returns, and an error answered by a middleware
gets them too (else a page cannot read the error).
"""

from __future__ import annotations

from aiohttp import web

WHIP_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": (
        "Location, ETag, Link, Accept-Patch, Retry-After, X-Reelhouse-Uid"
    ),
    "Access-Control-Max-Age": "600",
}
OBJECTS_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, PUT, OPTIONS",
    "Access-Control-Allow-Headers": (
        "Range, If-Range, If-None-Match, If-Modified-Since, Content-Type"
    ),
    "Access-Control-Expose-Headers": (
        "Content-Range, Content-Length, Accept-Ranges, ETag, Last-Modified, Retry-After"
    ),
    "Access-Control-Max-Age": "600",
}


def cors_headers(path: str) -> dict[str, str] | None:
    """The CORS headers of a response to ``path``; None for a route pages may not call."""
    if path.startswith("/v1/objects/"):
        return OBJECTS_CORS
    if path.startswith("/v1/apps/") and "/whip" in path:
        return WHIP_CORS
    return None


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the route's CORS headers on every response, errors included."""
    if (headers := cors_headers(request.path)) is not None:
        response.headers.update(headers)


async def objects_preflight(request: web.Request) -> web.Response:
    """``OPTIONS /v1/objects/{key}``: a preflight carries no signature; the GET or PUT it
    announces is checked when it comes."""
    return web.Response(status=204)
