"""A bare protocol-v1 client for tests that need to send exactly the frames they choose."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgpack
from media import Frame

TRACK_IDS = {"video": 0, "audio": 1}
RECEIVE_TIMEOUT_S = 20.0


class RawClient:
    """One WebSocket to ``/v1/ingest``; sends raw msgpack maps, collects what comes back."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self._http = http
        self._url = url.replace("http://", "ws://") + "/v1/ingest"
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.acked = 0
        self.controls: list[dict[str, Any]] = []
        self.seq = 0

    async def connect(self) -> None:
        self.ws = await self._http.ws_connect(self._url, max_msg_size=0)

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_bytes(msgpack.packb(msg, use_bin_type=True))

    async def recv(self, timeout: float = RECEIVE_TIMEOUT_S) -> dict[str, Any]:
        """The next server message; raises ``ConnectionError`` with the close code when closed."""
        assert self.ws is not None
        msg = await self.ws.receive(timeout=timeout)
        if msg.type is aiohttp.WSMsgType.CLOSE:
            # the code the server sent; ws.close_code turns 1006 if our close reply fails
            raise ConnectionError(msg.data, msg.extra)
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            raise ConnectionError(self.ws.close_code, msg.extra)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        out: dict[str, Any] = msgpack.unpackb(msg.data, raw=False)
        if out["t"] == "ack":
            self.acked = max(self.acked, out["seq"])
        elif out["t"] == "control":
            self.controls.append(out)
        return out

    async def hello(self, token: str, **ids: str) -> dict[str, Any]:
        await self.send({"t": "hello", "v": 1, "token": token, **ids})
        welcome = await self.recv()
        assert welcome["t"] == "welcome", welcome
        self.acked = welcome["acked_seq"]
        return welcome

    async def tracks(self, video: str | None = "h264", audio: str | None = "opus") -> None:
        if video:
            await self.send({"t": "track", "id": 0, "kind": "video", "codec": video})
        if audio:
            await self.send({"t": "track", "id": 1, "kind": "audio", "codec": audio})

    async def media(self, frame: Frame, seq: int | None = None) -> int:
        self.seq = seq if seq is not None else self.seq + 1
        msg = {
            "t": "media",
            "seq": self.seq,
            "track": TRACK_IDS[frame.kind],
            "pts": frame.pts_us,
            "key": frame.keyframe,
            "data": frame.data,
        }
        if frame.dts_us is not None and frame.dts_us != frame.pts_us:
            msg["dts"] = frame.dts_us
        await self.send(msg)
        return self.seq

    async def wait_ack(self, seq: int) -> None:
        """Read until the server acks ``seq`` (controls are collected on the way)."""
        while self.acked < seq:
            await self.recv()

    async def wait_control(self, action: str) -> dict[str, Any]:
        for c in self.controls:
            if c["action"] == action:
                return c
        while True:
            msg = await self.recv()
            if msg["t"] == "control" and msg["action"] == action:
                return msg

    async def closed(self) -> tuple[int | None, str]:
        """Read until the server closes; returns its close code and reason."""
        assert self.ws is not None
        while True:
            try:
                await self.recv()
            except ConnectionError as exc:
                return exc.args[0], str(exc.args[1] or "")
            except TimeoutError:
                return None, "timeout"

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
