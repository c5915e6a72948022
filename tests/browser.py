"""Headless Chromium for the tests (Debian's ``chromium``, fake camera and microphone), with a
minimal DevTools-protocol client to read the page."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

START_TIMEOUT_S = 30.0


def chromium_binary() -> str | None:
    """The Chromium on this machine (``make test`` installs Debian's)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """One headless Chromium process loading ``url``; ``evaluate`` runs JS in the page."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.profile = Path(tempfile.mkdtemp(prefix="reelhouse-chromium-"))
        self.process: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self.port = 0

    async def __aenter__(self) -> Chromium:
        binary = chromium_binary()
        assert binary is not None, "chromium is not installed (make test installs it)"
        self.process = await asyncio.create_subprocess_exec(
            binary, "--headless=new", "--no-sandbox", "--disable-gpu",
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            "--allow-loopback-in-peer-connection", "--no-first-run",
            f"--user-data-dir={self.profile}", "--remote-debugging-port=0", self.url,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        active = self.profile / "DevToolsActivePort"
        async with asyncio.timeout(START_TIMEOUT_S):
            # a file another process writes: there is no event to await
            while not await asyncio.to_thread(active.exists):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            while not self.port:
                text = await asyncio.to_thread(active.read_text)
                self.port = int(text.split()[0]) if text.strip() else 0
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        await asyncio.to_thread(shutil.rmtree, self.profile, True)

    async def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page (DevTools ``Runtime.evaluate``)."""
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{self.port}/json/list") as resp:
                targets = await resp.json()
            page = next(t for t in targets if t.get("type") == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"]) as ws:
                call_id = next(self._ids)
                await ws.send_str(
                    json.dumps(
                        {
                            "id": call_id,
                            "method": "Runtime.evaluate",
                            "params": {
                                "expression": expression,
                                "returnByValue": True,
                                "awaitPromise": True,
                            },
                        }
                    )
                )
                async for msg in ws:
                    reply = json.loads(msg.data)
                    if reply.get("id") == call_id:
                        return reply["result"]["result"].get("value")
        return None
