"""WHIP benchmark: N aiortc publishers, each in its own process, into one reelhouse.

Run: ``.venv/bin/python bench/whip.py --publishers 4 8 --duration 20``. For each N it starts
``reelhouse serve`` on a free loopback port with a no-token app (``reelhouse app create
--no-token``), starts N publisher processes that each send 640x360 15 fps VP8 (a moving
pattern) and Opus over WHIP for the given seconds, samples the server's CPU, and reads its
``reelhouse_whip_*_frames_total`` counters. A publisher count is "held in real time" when the
server received at least 95 % of the video frames sent. The publishers share the 2 cores with
the server (their own CPU is reported too), so the figure is a floor.

Writes bench/results/whip.json.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import importlib.util
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

WIDTH, HEIGHT, FPS = 640, 360, 15
REALTIME_SHARE = 0.95
PEER_GRACE_S = 30.0


def _load_ingest_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_ingest", ROOT / "bench" / "ingest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---- one publisher (a child process) ------------------------------------------------------


async def _peer(url: str, seconds: float) -> None:
    import aiohttp
    import av
    import numpy as np
    from aiortc import (
        AudioStreamTrack,
        RTCConfiguration,
        RTCPeerConnection,
        RTCSessionDescription,
        VideoStreamTrack,
    )

    class Pattern(VideoStreamTrack):
        """A bar moving over a grey field, 15 fps (aiortc's own pacing is 30)."""

        def __init__(self) -> None:
            super().__init__()
            self._n = 0
            self._t0 = time.monotonic()

        async def recv(self) -> av.VideoFrame:
            due = self._t0 + self._n / FPS
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            image = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
            x = (self._n * 8) % (WIDTH - 40)
            image[:, x : x + 40] = (230, 200, 40)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = self._n * 6000, fractions.Fraction(1, 90000)
            self._n += 1
            return frame

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(Pattern(), direction="sendonly")
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        headers = {"Content-Type": "application/sdp"}
        async with http.post(url, data=pc.localDescription.sdp, headers=headers) as resp:
            if resp.status != 201:
                raise RuntimeError(f"WHIP POST: {resp.status} {await resp.text()}")
            location = resp.headers["Location"]
            await pc.setRemoteDescription(RTCSessionDescription(await resp.text(), "answer"))
        await asyncio.sleep(seconds)
        async with http.delete(url.split("/v1/")[0] + location):
            pass
    await pc.close()


# ---- the driver -----------------------------------------------------------------------------


def _metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def run(n: int, seconds: float, tmp: Path) -> dict[str, Any]:
    import aiohttp

    bench = _load_ingest_bench()
    data = tmp / f"data-{n}"
    reelhouse = str(ROOT / ".venv" / "bin" / "reelhouse")
    made = await asyncio.to_thread(
        subprocess.run,
        [reelhouse, "app", "create", "--no-token", "--data-dir", str(data)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    appid = made.stdout.split()[1]
    port, key = bench.free_port(), secrets.token_hex(8)
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "REELHOUSE_WEBRTC__HOST_ADDRESSES": "127.0.0.1"}
    server = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        [reelhouse, "serve", "--port", str(port), "--data-dir", str(data), "--api-key", key,
         "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT,
    )  # fmt: skip
    peers: list[asyncio.subprocess.Process] = []
    try:
        await bench.wait_healthy(url, server)
        sampler = bench.Sampler([server.pid])
        sampler.start()
        client_cpu0 = bench.children_cpu_s()
        t0 = time.monotonic()
        for i in range(n):
            whip = f"{url}/v1/apps/{appid}/channels/bench/whip?uid=p{i}"
            command = [sys.executable, __file__, "--peer", whip, "--duration", str(seconds)]
            peers.append(await asyncio.create_subprocess_exec(*command, cwd=ROOT))
        codes = await asyncio.wait_for(
            asyncio.gather(*(p.wait() for p in peers)), seconds + PEER_GRACE_S
        )
        wall = time.monotonic() - t0
        cpu, rss = await sampler.stop()
        async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
            metrics = _metrics(await resp.text())
    finally:
        for p in peers:
            if p.returncode is None:
                p.kill()
        bench._terminate(server)
    video = metrics.get("reelhouse_whip_video_frames_total", 0.0)
    expected = n * seconds * FPS
    return {
        "publishers": n,
        "seconds": seconds,
        "failed_publishers": sum(1 for c in codes if c != 0),
        "server_cpu_s": round(cpu, 2),
        "server_cpu_s_per_publisher_s": round(cpu / (n * seconds), 4),
        "server_cores": round(cpu / wall, 2),
        "server_peak_rss_mb": round(rss, 1),
        "publishers_cpu_cores": round((bench.children_cpu_s() - client_cpu0) / wall, 2),
        "video_frames_received": int(video),
        "video_frames_sent_about": int(expected),
        "realtime_ok": video >= REALTIME_SHARE * expected,
    }


async def driver(args: argparse.Namespace) -> None:
    results = []
    with tempfile.TemporaryDirectory(prefix="reelhouse-whip-") as raw:
        for n in args.publishers:
            row = await run(n, args.duration, Path(raw))
            print(json.dumps(row), flush=True)
            results.append(row)
    held = [r["publishers"] for r in results if r["realtime_ok"]]
    out = {
        "machine_cores": os.cpu_count(),
        "video": f"{WIDTH}x{HEIGHT} {FPS} fps VP8 + Opus, aiortc publishers, one process each",
        "runs": results,
        "most_held_in_real_time": max(held, default=0),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "whip.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / 'whip.json'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--publishers", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--peer", help=argparse.SUPPRESS)  # a child: one publisher to this URL
    args = p.parse_args()
    if args.peer:
        asyncio.run(_peer(args.peer, args.duration))
        return
    asyncio.run(driver(args))


if __name__ == "__main__":
    main()
