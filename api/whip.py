"""WHIP (RFC 9725): ``/v1/apps/{appid}/channels/{cname}/whip`` and its resources.

POST an SDP offer (``application/sdp``) with ``Authorization: Bearer <channel token>`` →
201, the SDP answer, ``Location`` of the resource, ``ETag`` and the ICE servers as ``Link``
headers. PATCH the resource with a trickle-ICE fragment (``application/trickle-ice-sdpfrag``,
``If-Match``); DELETE it to leave. Every response carries CORS headers so a page of another
origin can publish. An app made without tokens takes the uid from the ``uid`` query parameter
(one is generated when absent) and no Authorization.
"""

from __future__ import annotations

import math
import secrets
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from ingest.errors import RpcCode
from ingest.tokens import Role, TokenError, check_cname, check_uid, verify
from ingest.webrtc import AtCapacity, OfferError, TrickleError, WebRtcSettings, WhipSession

from .bodies import readable_body
from .errors import rpc_error
from .keys import APPS, WHIP

BASE = "/v1/apps/{appid}/channels/{cname}/whip"
SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
PUBLISH_PAGE = Path(__file__).parent / "static" / "publish.html"


async def publish_page(request: web.Request) -> web.FileResponse:
    """``/publish``: a plain page that publishes camera, microphone or screen over WHIP."""
    return web.FileResponse(PUBLISH_PAGE, headers={"Content-Type": "text/html; charset=utf-8"})


def add_routes(app: web.Application) -> None:
    """Register the WHIP endpoint, its resources and the publish page."""
    app.router.add_get("/publish", publish_page)
    app.router.add_route("OPTIONS", BASE, preflight)
    app.router.add_post(BASE, publish)
    app.router.add_route("OPTIONS", BASE + "/{resource}", preflight)
    app.router.add_patch(BASE + "/{resource}", patch)
    app.router.add_delete(BASE + "/{resource}", delete)


def ice_links(settings: WebRtcSettings, *, credentials: bool = True) -> list[str]:
    """``Link`` header values announcing the ICE servers (RFC 9725 section 4.6); without
    ``credentials``, TURN servers (which are no use without them) are left out."""
    links = []
    for url in settings.servers():
        if url.startswith("turn") and not credentials:
            continue
        link = f'<{url}>; rel="ice-server"'
        if url.startswith("turn") and settings.ice_username:
            link += (
                f'; username="{settings.ice_username}"; credential="{settings.ice_credential}"'
                '; credential-type="password"'
            )
        links.append(link)
    return links


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight, and the STUN servers for a client that asks before POSTing. Not the
    TURN servers' credentials: a preflight carries none of its own, so anyone could read them
    (and relay through the TURN server); the 201 answer to an authorised offer has them."""
    resp = web.Response(status=204, headers={"Accept-Post": SDP})
    for link in ice_links(request.app[WHIP].settings, credentials=False):
        resp.headers.add("Link", link)
    return resp


async def publish(request: web.Request) -> web.Response:
    """POST: an SDP offer in, 201 with the answer out."""
    appid, cname = request.match_info["appid"], request.match_info["cname"]
    app_row = await request.app[APPS].get(appid)
    if app_row is None:
        raise rpc_error(RpcCode.NOT_FOUND, f"app {appid} not found")
    try:
        check_cname(cname)
    except TokenError as exc:
        raise rpc_error(RpcCode.INVALID_ARGUMENT, str(exc)) from None
    if request.content_type != SDP:
        raise web.HTTPUnsupportedMediaType(reason=f"send the offer as {SDP}")
    uid = _authorise(request, app_row.certificate if app_row.token_required else None)
    offer = await _utf8(request, "offer")
    whip = request.app[WHIP]
    try:
        resource, answer = await whip.publish(appid, cname, uid, offer)
    except OfferError as exc:
        raise rpc_error(RpcCode.INVALID_ARGUMENT, str(exc)) from None
    except AtCapacity as exc:
        retry = str(math.ceil(whip.settings.connect_timeout_s))
        raise rpc_error(RpcCode.UNAVAILABLE, str(exc), {"Retry-After": retry}) from None
    location = f"/v1/apps/{quote(appid)}/channels/{quote(cname)}/whip/{resource}"
    session = whip.find(resource)
    if session is None:  # (its peer failed, or a DELETE came, before the answer went out)
        raise rpc_error(RpcCode.NOT_FOUND, "the session ended before its offer was answered")
    resp = web.Response(
        status=201,
        text=answer,
        content_type=SDP,
        headers={
            "Location": location,
            "ETag": session.etag,
            "Accept-Patch": SDPFRAG,
            "X-Reelhouse-Uid": uid,
        },
    )
    for link in ice_links(whip.settings):
        resp.headers.add("Link", link)
    return resp


def _authorise(request: web.Request, certificate: str | None) -> str:
    """The publishing uid: from a valid token, or (no-token apps) the ``uid`` parameter."""
    wanted = request.query.get("uid")
    try:
        if wanted is not None:
            check_uid(wanted)
        if certificate is None:
            return wanted or f"u{secrets.randbelow(2**31)}"
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenError("send Authorization: Bearer <channel token>")
        grant = verify(
            token.strip(),
            certificate,
            appid=request.match_info["appid"],
            cname=request.match_info["cname"],
            uid=wanted,
            role=Role.PUBLISHER,
        )
    except TokenError as exc:
        raise rpc_error(
            RpcCode.UNAUTHENTICATED,
            str(exc),
            headers={"WWW-Authenticate": 'Bearer realm="reelhouse-whip"'},
        ) from None
    return grant.uid


async def _utf8(request: web.Request, what: str) -> str:
    """The body as text: SDP is UTF-8 (RFC 8866), whatever charset the request names."""
    try:
        with readable_body(request):
            return (await request.read()).decode("utf-8")
    except UnicodeDecodeError:
        raise rpc_error(RpcCode.INVALID_ARGUMENT, f"the {what} is not UTF-8 SDP") from None


def _session(request: web.Request) -> WhipSession:
    session = request.app[WHIP].find(request.match_info["resource"])
    if (
        session is None
        or session.appid != request.match_info["appid"]
        or session.cname != request.match_info["cname"]
    ):
        raise rpc_error(RpcCode.NOT_FOUND, "no such WHIP resource (ended or never made)")
    return session


async def patch(request: web.Request) -> web.Response:
    """PATCH: trickle ICE candidates; an ICE restart is answered 422 (not supported)."""
    session = _session(request)
    if request.content_type != SDPFRAG:
        raise web.HTTPUnsupportedMediaType(reason=f"send {SDPFRAG}")
    match = request.headers.get("If-Match")
    if match is None:
        raise web.HTTPPreconditionRequired(reason="send If-Match with the resource's ETag")
    if match != "*" and match != session.etag:
        raise web.HTTPPreconditionFailed(reason="If-Match does not match the resource's ETag")
    try:
        await request.app[WHIP].patch(session, await _utf8(request, "fragment"))
    except TrickleError as exc:
        if exc.restart:
            raise web.HTTPUnprocessableEntity(reason=str(exc)) from None
        raise rpc_error(RpcCode.INVALID_ARGUMENT, str(exc)) from None
    return web.Response(status=204)


async def delete(request: web.Request) -> web.Response:
    """DELETE: leave the channel and end the session."""
    session = _session(request)
    await request.app[WHIP].close(session, "deleted")
    return web.Response(status=200)
