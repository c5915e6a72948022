"""A real webhook receiver on loopback for the notifier's tests: it records every request and
answers what the test says; it can start "down" (its port refuses connections) and come up."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

WAIT_S = 5.0  # upper bound on any wait for a delivery over loopback; normally milliseconds


@dataclass
class Hit:
    """One request the receiver got."""

    body: bytes
    headers: dict[str, str]
    status: int

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def notice_id(self) -> str:
        return str(self.json["noticeId"])

    @property
    def sid(self) -> str:
        return str(self.json["payload"]["sid"])

    @property
    def sequence(self) -> int:
        return int(self.json["payload"]["sequence"])


Behaviour = Callable[[dict[str, Any], int], Awaitable[int]]  # (notice, nth hit of it) -> status


@dataclass
class Receiver:
    """A webhook receiver: records every request, answers what ``behaviour`` says."""

    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    behaviour: Behaviour | None = None
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight_per_sid: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        notice = json.loads(body)
        sid = notice["payload"]["sid"]
        self.in_flight[sid] = self.in_flight.get(sid, 0) + 1
        self.max_in_flight_per_sid = max(self.max_in_flight_per_sid, self.in_flight[sid])
        try:
            await asyncio.sleep(0)  # let another request of the same sid overlap, if one could
            seen = sum(1 for h in self.hits if h.notice_id == notice["noticeId"])
            status = await self.behaviour(notice, seen) if self.behaviour else 200
        finally:
            self.in_flight[sid] -= 1
        async with self.changed:
            self.hits.append(Hit(body, dict(request.headers), status))
            self.changed.notify_all()
        return web.Response(status=status)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Until ``predicate()`` holds after some request."""
        async with asyncio.timeout(WAIT_S), self.changed:
            await self.changed.wait_for(predicate)

    def accepted(self, sid: str | None = None) -> list[Hit]:
        return [h for h in self.hits if h.status == 200 and (sid is None or h.sid == sid)]

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        return app


class DownReceiver:
    """A receiver whose port is reserved but refuses connections until ``up`` is awaited.

    The socket is bound (so no one else takes the port) and not listening (so a connection is
    refused at once, like a receiver that is down); ``up`` starts serving on that very socket.
    """

    def __init__(self) -> None:
        self.receiver = Receiver()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        port = self._sock.getsockname()[1]
        self.receiver.url = f"http://127.0.0.1:{port}/hook"
        self._runner: web.AppRunner | None = None

    async def up(self) -> Receiver:
        """Start answering on the reserved port."""
        self._runner = web.AppRunner(self.receiver.application())
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()
        return self.receiver

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._sock.close()
