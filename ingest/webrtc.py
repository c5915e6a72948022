"""WebRTC publishers over WHIP (RFC 9725), on aiortc, joined to the channel registry.

A WHIP POST carries an SDP offer; :meth:`WhipServer.publish` checks it (audio and video only,
Opus, VP8 or H.264 offered), answers with every ICE candidate gathered (no trickle needed by
the client), joins the uid to its channel and fans every received frame out to the channel's
subscribers. The resource ends on DELETE, when the peer connection fails or closes, or when the
same uid joins again (the newer connection wins).

ICE is configuration (:class:`WebRtcSettings`): STUN/TURN servers given to aiortc and advertised
to clients, and the host addresses announced in candidates. aioice leaves loopback out of its
host candidates; naming ``127.0.0.1`` in ``host_addresses`` puts it back (tests, one-box use),
and a server whose HTTP side listens on a loopback address only announces that address when
``host_addresses`` is empty: its clients are on the same box, and its media stays there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidAccessError, OperationError
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription, candidate_from_sdp

from .arrival import ArrivalClock
from .channels import ChannelRegistry, MediaFrame, Member, TrackInfo, Transport

log = logging.getLogger(__name__)

SUPPORTED_CODECS = {"audio": {"opus"}, "video": {"vp8", "h264"}}
MAX_SDP_BYTES = 64 * 1024
# remote ICE candidates a WHIP session takes by PATCH: aiortc checks each pair it makes, so
# an endless trickle would be endless work (a browser sends a handful)
MAX_REMOTE_CANDIDATES = 64
US = 1_000_000


@dataclass(frozen=True, slots=True)
class WebRtcSettings:
    """``[webrtc]``: ICE servers, announced host addresses, limits."""

    ice_servers: str = ""  # comma-separated stun:/turn: URLs, given to clients in Link headers
    ice_username: str = ""  # for the TURN servers
    ice_credential: str = ""
    host_addresses: str = ""  # comma-separated IPs for host candidates; empty: every interface
    gather_timeout_s: float = 5.0
    connect_timeout_s: float = 30.0  # a peer that never completes ICE/DTLS is dropped
    max_sessions: int = 200

    def servers(self) -> list[str]:
        """The ICE server URLs."""
        return [u.strip() for u in self.ice_servers.split(",") if u.strip()]

    def hosts(self) -> list[str]:
        """The announced host addresses (empty: aioice's own choice)."""
        return [a.strip() for a in self.host_addresses.split(",") if a.strip()]


class OfferError(ValueError):
    """The SDP offer cannot be accepted; the message says why (the API answers 400)."""


class AtCapacity(Exception):
    """The server holds ``max_sessions`` already: no fault of the offer (the API answers 503
    with ``Retry-After``; a session that never connects frees its place within
    ``connect_timeout_s``)."""


class TrickleError(ValueError):
    """A PATCH fragment that cannot be applied (``restart``: an ICE restart, not supported)."""

    def __init__(self, message: str, *, restart: bool = False) -> None:
        super().__init__(message)
        self.restart = restart


_AIOICE_HOST_ADDRESSES = aioice.ice.get_host_addresses


def loopback_hosts(bind_host: str) -> list[str]:
    """``[bind_host]`` when the HTTP side listens on a loopback address only, else ``[]``."""
    if bind_host == "localhost":
        return ["127.0.0.1"]
    try:
        return [bind_host] if ipaddress.ip_address(bind_host).is_loopback else []
    except ValueError:  # a host name or an empty string: every interface
        return []


def announce_hosts(addresses: list[str]) -> None:
    """Make aioice announce exactly ``addresses`` as host candidates (process-wide); with none,
    aioice's own choice (every interface but loopback)."""
    if not addresses:
        aioice.ice.get_host_addresses = _AIOICE_HOST_ADDRESSES
        return
    chosen = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


# what aiortc negotiates, said when it refuses an offer's codec parameters
CODEC_HINT = (
    "this server takes VP8, or H.264 constrained baseline (profile-level-id 42e01f or 42001f) "
    "with packetization-mode=1, and Opus"
)
_CANDIDATE = re.compile(r"^a=candidate:", re.M)
MDNS_SUFFIX = ".local"
_MLINE = re.compile(r"^m=(\w+) ", re.M)
_RTPMAP = re.compile(r"^a=rtpmap:\d+ ([\w-]+)/", re.M)


def check_offer(sdp: str) -> list[str]:
    """The offer's media kinds, or ``OfferError`` naming what is wrong with it."""
    if len(sdp.encode()) > MAX_SDP_BYTES:
        raise OfferError(f"SDP offer larger than {MAX_SDP_BYTES} bytes")
    if not sdp.startswith("v=0"):
        raise OfferError("not an SDP offer: it must start with v=0")
    sections = re.split(r"(?=^m=)", sdp.replace("\r\n", "\n"), flags=re.M)[1:]
    if not sections:
        raise OfferError("the offer has no media section (m=)")
    kinds = []
    for section in sections:
        match = _MLINE.match(section)
        kind = match.group(1) if match else "?"
        if kind not in SUPPORTED_CODECS:
            raise OfferError(f"m={kind}: only audio and video can be published")
        offered = {c.lower() for c in _RTPMAP.findall(section)}
        if not offered & SUPPORTED_CODECS[kind]:
            want = ", ".join(sorted(SUPPORTED_CODECS[kind]))
            raise OfferError(
                f"m={kind} offers {', '.join(sorted(offered)) or 'no codec'}; needs one of {want}"
            )
        if "a=recvonly" in section or "a=inactive" in section:
            raise OfferError(f"m={kind} is not sending: a WHIP offer publishes (sendonly)")
        kinds.append(kind)
    if len(_CANDIDATE.findall(sdp)) > MAX_REMOTE_CANDIDATES:
        raise OfferError(f"at most {MAX_REMOTE_CANDIDATES} candidates (each is checked)")
    return kinds


def _without_mdns(sdp: str) -> str:
    """``sdp`` without host candidates named by mDNS (``….local``, what browsers send in place
    of their addresses). Resolving one makes aioice bind a UDP socket on every interface
    (port 5353, multicast), whatever ``host_addresses`` says; and a server is rarely on its
    publishers' link anyway. ICE still connects: the publisher's checks reach the server's
    candidates, which then learns its address (a peer-reflexive candidate)."""
    return re.sub(
        rf"^a=candidate:[^\r\n]*\S+{re.escape(MDNS_SUFFIX)} [^\r\n]*\r?\n", "", sdp, flags=re.M
    )


@dataclass(eq=False)
class WhipSession:
    """One published WHIP resource."""

    resource_id: str
    appid: str
    cname: str
    uid: str
    pc: RTCPeerConnection
    etag: str
    member: Member | None = None
    closed: bool = False
    clocks: dict[str, ArrivalClock] = field(default_factory=dict)  # by track name: lip sync
    # each received track's name: its kind and m-line (mid), which the offer cannot make two
    # tracks share (aiortc names a track by the offer's msid, and two m-lines may say one)
    names: dict[MediaStreamTrack, str] = field(default_factory=dict)
    candidates: int = 0  # remote candidates trickled in (PATCH)


class WhipServer:
    """Every WHIP resource of this server."""

    def __init__(
        self, registry: ChannelRegistry, settings: WebRtcSettings, bind_host: str = ""
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.sessions: dict[str, WhipSession] = {}
        self._answering = 0  # offers being answered: they count against max_sessions too
        self._tasks: set[asyncio.Task[None]] = set()
        self.frames_in = {"audio": 0, "video": 0}  # decoded frames received, for /metrics
        announce_hosts(settings.hosts() or loopback_hosts(bind_host))

    def _configuration(self) -> RTCConfiguration:
        servers = [
            RTCIceServer(
                urls=url,
                username=self.settings.ice_username or None,
                credential=self.settings.ice_credential or None,
            )
            for url in self.settings.servers()
        ]
        return RTCConfiguration(iceServers=servers)  # [] and never aiortc's public default

    async def publish(self, appid: str, cname: str, uid: str, offer: str) -> tuple[str, str]:
        """Accept ``offer`` for ``uid``; returns (the session's resource id, the SDP answer)."""
        check_offer(offer)
        # (counted before the first await: offers that come together cannot all pass)
        if len(self.sessions) + self._answering >= self.settings.max_sessions:
            raise AtCapacity(
                f"this server holds {self.settings.max_sessions} WHIP sessions: try again later"
            )
        self._answering += 1
        try:
            return await self._answer(appid, cname, uid, offer)
        finally:
            self._answering -= 1

    async def _answer(self, appid: str, cname: str, uid: str, offer: str) -> tuple[str, str]:
        pc = RTCPeerConnection(self._configuration())
        session = WhipSession(secrets.token_urlsafe(12), appid, cname, uid, pc, _etag())
        pc.on("track", lambda track: self._spawn(self._pump(session, track)))
        pc.on("connectionstatechange", lambda: self._on_state(session))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(_without_mdns(offer), "offer"))
            for transceiver in pc.getTransceivers():  # before any packet can arrive
                track = transceiver.receiver.track
                if track is not None:
                    name = session.names[track] = f"{track.kind}-{transceiver.mid}"
                    session.clocks[name] = ArrivalClock(transceiver.receiver)
            answer = await pc.createAnswer()
            async with asyncio.timeout(self.settings.gather_timeout_s):
                await pc.setLocalDescription(answer)  # gathers every candidate first
        except (
            ValueError,
            TimeoutError,
            OperationError,
            InvalidAccessError,
            AssertionError,
        ) as exc:
            # (aiortc's refusals: OperationError for codec parameters it cannot take, such as
            # H.264 other than constrained baseline in packetization-mode 1; an assert on a
            # malformed candidate line)
            await pc.close()
            hint = f" ({CODEC_HINT})" if isinstance(exc, OperationError) else ""
            raise OfferError(
                f"the offer could not be answered: {exc or type(exc).__name__}{hint}"
            ) from None
        except BaseException:
            await pc.close()
            raise
        self.sessions[session.resource_id] = session
        session.member = await self.registry.join(
            appid, cname, uid, Transport.WHIP, lambda reason: self.close(session, reason)
        )
        if session.closed:  # deleted (or replaced) while the join waited: leave again
            self.registry.leave(appid, cname, session.member, "deleted")
            raise OfferError("the session was ended while its offer was being answered")
        codecs = _answered_codecs(pc.localDescription.sdp)
        for transceiver in pc.getTransceivers():
            track = transceiver.receiver.track
            if track is not None:
                codec = codecs.get(transceiver.mid or "", "unknown")
                name = session.names.get(track, track.id)
                self.registry.set_track(
                    appid, cname, session.member, TrackInfo(name, track.kind, codec)
                )
        self._spawn(self._expect_connection(session))
        log.info("WHIP %s: %s joined %s/%s", session.resource_id, uid, appid, cname)
        return session.resource_id, pc.localDescription.sdp

    async def _expect_connection(self, session: WhipSession) -> None:
        """Close a session whose peer does not connect in time (it would hold its uid)."""
        connected = asyncio.Event()

        def check() -> None:
            if session.pc.connectionState == "connected":
                connected.set()

        session.pc.on("connectionstatechange", check)
        check()
        try:
            await asyncio.wait_for(connected.wait(), self.settings.connect_timeout_s)
        except TimeoutError:
            await self.close(session, "no connection within the connect timeout")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self, session: WhipSession, track: MediaStreamTrack) -> None:
        """Received frames (decoded by aiortc) to the channel's subscribers."""
        name = session.names.get(track, track.id)
        while not session.closed:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            self.frames_in[track.kind] = self.frames_in.get(track.kind, 0) + 1
            member = session.member
            channel = self.registry.get(session.appid, session.cname)
            if member is None or channel is None:
                continue  # still joining: nobody can be subscribed to it yet
            base = frame.time_base
            pts_us = int(frame.pts * base * US) if frame.pts is not None and base else 0
            clock = session.clocks.get(name)
            wall_us = None
            if clock is not None and frame.pts is not None and base and base.numerator == 1:
                wall_us = clock.wall_us(frame.pts, base.denominator)
            if wall_us is not None:
                pts_us = wall_us
            shared = wall_us is not None
            frame_out = MediaFrame(
                session.uid, name, track.kind, frame, pts_us, True, shared_clock=shared
            )
            channel.publish(member, frame_out)
        if session.member is not None:
            self.registry.end_track(session.appid, session.cname, session.member, name)

    def _on_state(self, session: WhipSession) -> None:
        if session.pc.connectionState in ("failed", "closed"):
            self._spawn(self.close(session, f"connection {session.pc.connectionState}"))

    def find(self, resource_id: str) -> WhipSession | None:
        """The live session behind a resource id."""
        return self.sessions.get(resource_id)

    async def patch(self, session: WhipSession, fragment: str) -> None:
        """Apply a trickle-ICE SDP fragment (RFC 8840); an ICE restart is refused."""
        ufrags = re.findall(r"^a=ice-ufrag:(\S+)", fragment, flags=re.M)
        remote = session.pc.remoteDescription
        if ufrags and remote is not None and f"a=ice-ufrag:{ufrags[0]}" not in remote.sdp:
            raise TrickleError("ICE restarts are not supported", restart=True)
        candidates = re.findall(r"^a=candidate:(.+)$", fragment.replace("\r\n", "\n"), re.M)
        transceivers = session.pc.getTransceivers()
        if not transceivers:
            raise TrickleError("the session has no media to add candidates to")
        mid = transceivers[0].mid
        if candidates and remote is not None and "a=end-of-candidates" in remote.sdp:
            # (its ICE agent takes no more once told the list is whole: said, not dropped)
            raise TrickleError("the offer ended its candidates (a=end-of-candidates)")
        if session.candidates + len(candidates) > MAX_REMOTE_CANDIDATES:
            raise TrickleError(
                f"at most {MAX_REMOTE_CANDIDATES} candidates a session (each is checked)"
            )
        session.candidates += len(candidates)
        for line in candidates:
            try:
                candidate = candidate_from_sdp(line)
            except (ValueError, IndexError, AssertionError):  # (aiortc asserts on its input)
                raise TrickleError(f"not an ICE candidate: {line[:80]!r}") from None
            if candidate.ip.endswith(MDNS_SUFFIX):
                continue  # (see _without_mdns)
            candidate.sdpMid = mid
            await session.pc.addIceCandidate(candidate)

    async def close(self, session: WhipSession, reason: str = "deleted") -> None:
        """End the resource: leave the channel, close the peer connection."""
        if session.closed:
            return
        session.closed = True
        self.sessions.pop(session.resource_id, None)
        if session.member is not None:
            self.registry.leave(session.appid, session.cname, session.member, reason)
        await session.pc.close()
        log.info("WHIP %s: %s left (%s)", session.resource_id, session.uid, reason)

    async def aclose(self) -> None:
        """Close every session (server shutdown)."""
        for session in list(self.sessions.values()):
            await self.close(session, "server shutting down")
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _etag() -> str:
    return f'"{secrets.token_hex(8)}"'


def _answered_codecs(answer: str) -> dict[str, str]:
    """Media section id → the codec the answer settled on (its first), e.g. ``"vp8"``."""
    return {
        str(media.rtp.muxId): media.rtp.codecs[0].mimeType.split("/")[-1].lower()
        for media in SessionDescription.parse(answer).media
        if media.rtp.codecs
    }
