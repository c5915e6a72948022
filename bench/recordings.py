"""Recordings benchmark: one large rrweb event recording ingested by ``POST /v1/recordings``
and streamed back by ``GET /v1/recordings/{id}/events``, against a real ``reelhouse serve``.

Run: ``.venv/bin/python bench/recordings.py --mb 200``.

Generates rrweb-shaped events (a DOM snapshot, mouse moves, mutations that add subtrees,
scrolls, inputs; seeded, so runs compare) into a body file, uploads it as a stream, reads the
stored object's size for the compression ratio, streams the events back and checks that their
SHA-256 equals that of the array sent. The server's RSS is sampled from /proc every 20 ms:
before, during the upload and during the stream (the target is under 100 MB while streaming).
Also times zstd (the stored format) and gzip on the first 32 MB of the same events, the
measurement behind the choice of zstd.

Writes bench/results/recordings-<MB>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import json
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import zstandard

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
API_KEY = "bench-key-0123456789"
RSS_SAMPLE_S = 0.02
UPLOAD_CHUNK_BYTES = 1024 * 1024
COMPARE_BYTES = 32 * 1024**2
TAGS = ("div", "span", "a", "button", "li", "ul", "p", "input", "section", "img")
CLASSES = ("btn", "card", "row", "col-md-4", "nav-item", "active", "text-muted", "flex", "grid")
TEXTS = ("Login", "Sign in", "Welcome back", "Dashboard", "Settings", "Your projects", "Save")


def _node(rng: random.Random, depth: int, ids: list[int]) -> dict[str, Any]:
    ids[0] += 1
    node: dict[str, Any] = {
        "type": 2,
        "tagName": rng.choice(TAGS),
        "attributes": {"class": f"{rng.choice(CLASSES)} {rng.choice(CLASSES)}", "id": f"n{ids[0]}"},
        "childNodes": [],
        "id": ids[0],
    }
    if depth < 6:
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.3:
                ids[0] += 1
                node["childNodes"].append(
                    {"type": 3, "textContent": rng.choice(TEXTS), "id": ids[0]}
                )
            else:
                node["childNodes"].append(_node(rng, depth + 1, ids))
    return node


def events(rng: random.Random) -> Iterator[dict[str, Any]]:
    """An endless rrweb-shaped session."""
    t = 1714816800000
    ids = [0]
    yield {"type": 4, "data": {"href": "https://app.example.com/", "width": 1280}, "timestamp": t}
    yield {"type": 2, "data": {"node": _node(rng, 0, ids)}, "timestamp": t + 5}
    while True:
        t += rng.randint(5, 60)
        r = rng.random()
        if r < 0.6:
            moves = [
                {"x": rng.randint(0, 1280), "y": rng.randint(0, 720), "id": rng.randint(1, 3000),
                 "timeOffset": -rng.randint(0, 500)}
                for _ in range(rng.randint(1, 10))
            ]  # fmt: skip
            yield {"type": 3, "data": {"source": 1, "positions": moves}, "timestamp": t}
        elif r < 0.8:
            add = {"parentId": rng.randint(1, 3000), "nextId": None, "node": _node(rng, 4, ids)}
            data = {"source": 0, "texts": [], "attributes": [], "removes": [], "adds": [add]}
            yield {"type": 3, "data": data, "timestamp": t}
        elif r < 0.9:
            data = {"source": 3, "id": 1, "x": 0, "y": rng.randint(0, 5000)}
            yield {"type": 3, "data": data, "timestamp": t}
        else:
            text = "user@example.com"[: rng.randint(1, 16)]
            data = {"source": 5, "text": text, "isChecked": False, "id": rng.randint(1, 3000)}
            yield {"type": 3, "data": data, "timestamp": t}


def write_body(path: Path, target_bytes: int) -> tuple[int, int, str]:
    """The create body; returns the event count, the array's size and its SHA-256."""
    digest = hashlib.sha256()
    size = count = 0
    with open(path, "wb") as f:
        f.write(b'{"name": "bench", "started_at": "2024-05-04T10:00:00Z", "events": ')
        for event in events(random.Random(1)):
            piece = ("[" if count == 0 else ",").encode() + json.dumps(
                event, separators=(",", ":")
            ).encode()
            f.write(piece)
            digest.update(piece)
            size += len(piece)
            count += 1
            if size >= target_bytes:
                break
        f.write(b"]}")
        digest.update(b"]")
    return count, size + 1, digest.hexdigest()


def compare_codecs(body: Path) -> dict[str, Any]:
    """zstd -3 (stored) against gzip -6 on the first COMPARE_BYTES of the body."""
    data = body.read_bytes()[:COMPARE_BYTES]
    out: dict[str, Any] = {"sample_mb": round(len(data) / 1e6, 1)}
    for name, compress, decompress in (
        ("zstd3", zstandard.ZstdCompressor(level=3).compress, zstandard.decompress),
        ("gzip6", lambda b: gzip.compress(b, 6), gzip.decompress),
    ):
        t0 = time.perf_counter()
        packed = compress(data)
        t1 = time.perf_counter()
        decompress(packed)
        t2 = time.perf_counter()
        out[name] = {
            "ratio": round(len(data) / len(packed), 2),
            "compress_mb_s": round(len(data) / 1e6 / (t1 - t0), 1),
            "decompress_mb_s": round(len(data) / 1e6 / (t2 - t1), 1),
        }
    return out


class RssSampler:
    """Samples a process's resident set size from /proc while a phase runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self._task: asyncio.Task[None] | None = None

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    async def _run(self) -> None:
        while True:
            self.peak_kb = max(self.peak_kb, self.rss_kb())
            await asyncio.sleep(RSS_SAMPLE_S)

    async def __aenter__(self) -> RssSampler:
        self.peak_kb = self.rss_kb()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak_kb = max(self.peak_kb, self.rss_kb())


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    f = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, UPLOAD_CHUNK_BYTES):
            yield chunk
    finally:
        f.close()


@contextlib.asynccontextmanager
async def serve(data_dir: Path) -> AsyncIterator[tuple[str, int]]:
    """A ``reelhouse serve`` subprocess: its URL and pid."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "api.cli", "serve", "--port", "0", "--data-dir", str(data_dir),
        "--api-key", API_KEY, "--log-level", "WARNING",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        yield (await proc.stdout.readline()).decode().split()[-1], proc.pid
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


async def run(mb: int, workdir: Path) -> dict[str, Any]:
    body = workdir / "body.json"
    t0 = time.perf_counter()
    count, array_bytes, digest = write_body(body, mb * 1024**2)
    print(
        f"generated {count} events, {array_bytes / 1e6:.0f} MB in {time.perf_counter() - t0:.0f} s"
    )
    data_dir = workdir / "data"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    timeout = aiohttp.ClientTimeout(total=None)
    out: dict[str, Any] = {"events": count, "event_mb": round(array_bytes / 1e6, 1)}
    async with serve(data_dir) as (url, pid), aiohttp.ClientSession(timeout=timeout) as http:
        sampler = RssSampler(pid)
        out["server_rss_idle_mb"] = round(sampler.rss_kb() / 1024, 1)
        async with sampler:
            t0 = time.perf_counter()
            async with http.post(
                url + "/v1/recordings", data=file_chunks(body), headers=auth
            ) as resp:
                created = await resp.json()
                assert resp.status == 201, created
            ingest_s = time.perf_counter() - t0
        out["server_rss_peak_ingest_mb"] = round(sampler.peak_kb / 1024, 1)
        out["stream_same_server"] = await stream(http, url, pid, created["id"], digest, array_bytes)
    # a fresh server: what one stream takes, apart from what the big upload left allocated
    async with serve(data_dir) as (url, pid), aiohttp.ClientSession(timeout=timeout) as http:
        out["stream_fresh_server"] = await stream(
            http, url, pid, created["id"], digest, array_bytes
        )
    stored = sum(p.stat().st_size for p in (data_dir / "objects").rglob("events.json.zst"))
    out.update(
        stored_mb=round(stored / 1e6, 2),
        compression_ratio=round(array_bytes / stored, 2),
        ingest_s=round(ingest_s, 2),
        ingest_mb_s=round(array_bytes / 1e6 / ingest_s, 1),
        codecs=compare_codecs(body),
    )
    return out


async def stream(
    http: aiohttp.ClientSession, url: str, pid: int, rid: str, digest: str, size: int
) -> dict[str, float]:
    """Stream the events back, check them, and sample the server's RSS meanwhile."""
    check = hashlib.sha256()
    received = 0
    sampler = RssSampler(pid)
    before = sampler.rss_kb()
    async with sampler:
        t0 = time.perf_counter()
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with http.get(f"{url}/v1/recordings/{rid}/events", headers=headers) as resp:
            async for chunk in resp.content.iter_chunked(UPLOAD_CHUNK_BYTES):
                check.update(chunk)
                received += len(chunk)
        took = time.perf_counter() - t0
    assert check.hexdigest() == digest and received == size, "events differ"
    return {
        "s": round(took, 2),
        "mb_s": round(size / 1e6 / took, 1),
        "rss_before_mb": round(before / 1024, 1),
        "rss_peak_mb": round(sampler.peak_kb / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the event array")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-recordings-") as tmp:
        result = asyncio.run(run(args.mb, Path(tmp)))
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"recordings-{args.mb}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
