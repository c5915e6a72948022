"""Ingest benchmark: N WebSocket publishers into one reelhouse, against N ``ffmpeg -re`` to HLS.

Run: ``.venv/bin/python bench/ingest.py --publishers 50 --duration 30``. It makes a 1280x720
15 fps H.264 + Opus clip once (cached in bench/.cache/), starts ``reelhouse serve`` on a free
loopback port, streams the clip in a loop from N publishers in one client process, samples the
server's CPU time (its writer lanes included) and peak RSS, then runs N ffmpeg processes doing
the same work (video copied, Opus → AAC 64 kbit/s mono, HLS plus a whole-session MP4, as
reelhouse records), measures them the same way and says whether they kept real time.
Writes bench/results/ingest-<N>.json and appends a row to bench/results/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.config import RecorderSettings  # noqa: E402

AAC_CODER = RecorderSettings().aac_coder  # the server's default: the reference encodes alike
CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "results"
CLIP_S = 20
SERVER_START_TIMEOUT_S = 30.0
SAMPLE_EVERY_S = 0.5
REALTIME_TOLERANCE = 0.97  # acked media ≥ 97% of the wall time counts as holding real time
# ...and acknowledged promptly: a server that only catches up at the end (acks seconds behind)
# is not keeping up, even if every frame is acked before the publishers give up
REALTIME_ACK_P99_MS = 1000.0
CLIENT_GRACE_S = 60.0  # for the last acks, bye and END after the publishing time is up
CLK_TCK = os.sysconf("SC_CLK_TCK")
VIDEO_FPS = 15
AUDIO_FPS = 50  # 20 ms Opus frames
SERVER_LOG_KEEP = Path(tempfile.gettempdir())  # server logs are kept as reelhouse-bench-N-R.log
_LOG_PROBLEM = re.compile(r"^\S+ (WARNING|ERROR|CRITICAL) |^Traceback")


def scan_log(path: Path) -> dict[str, Any]:
    """Counts of WARNING/ERROR lines and tracebacks in a server log, with a few samples."""
    counts: dict[str, int] = {}
    samples: list[str] = []
    with contextlib.suppress(OSError), path.open(errors="replace") as f:
        for line in f:
            m = _LOG_PROBLEM.match(line)
            if not m:
                continue
            kind = m.group(1) or "Traceback"
            counts[kind] = counts.get(kind, 0) + 1
            if len(samples) < 5:
                samples.append(line.rstrip()[:300])
    return {"server_log_problems": counts, "server_log_samples": samples}


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def make_clip() -> Path:
    """The benchmark clip, made once with the ffmpeg CLI."""
    CACHE.mkdir(parents=True, exist_ok=True)
    clip = CACHE / "clip-720p15-h264-opus.mkv"
    if not clip.exists():
        tmp = clip.with_suffix(".tmp.mkv")
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y",
             "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=15",
             "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
             "-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-bf", "0",
             "-pix_fmt", "yuv420p", "-c:a", "libopus", "-ac", "1", "-t", str(CLIP_S), str(tmp)],
            check=True,
        )  # fmt: skip
        tmp.rename(clip)
    return clip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    out = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process, its waited-for children, and its live descendants."""
    total = 0.0
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[11..14] = utime, stime, cutime, cstime (stat fields 14-17)
        total = sum(int(x) for x in fields[11:15]) / CLK_TCK
    for child in _children(pid):
        total += cpu_seconds(child)
    return total


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a process and its live descendants, in MB."""
    total = 0.0
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    total = int(line.split()[1]) / 1024
    return total + sum(peak_rss_mb(c) for c in _children(pid))


def pss_mb(pid: int) -> float:
    """Proportional set size of a process and its live descendants, in MB: pages shared
    between them (the writer lanes fork from one parent) are counted once, split."""
    total = 0.0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                total = int(line.split()[1]) / 1024
                break
    return total + sum(pss_mb(c) for c in _children(pid))


class Sampler:
    """Samples CPU seconds, peak RSS and peak PSS of a set of processes until stopped."""

    def __init__(self, pids: list[int], *, pss: bool = True) -> None:
        self.pids = pids
        # reading smaps_rollup costs ~2-9 ms a process and holds its memory map's lock: worth
        # it for the server's few processes, not for N ffmpeg processes (100 of them took 0.9 s
        # and 0.24 CPU-s a sample, slowing the very processes being measured)
        self._with_pss = pss
        self.cpu: dict[int, float] = {}
        self.rss: dict[int, float] = {}
        self.pss = 0.0  # the largest sum seen (sampled, so a lower bound of the true peak)
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        for pid in self.pids:
            cpu, rss = cpu_seconds(pid), peak_rss_mb(pid)
            if cpu:  # a reaped process reads 0: keep its last figure
                self.cpu[pid] = cpu
            self.rss[pid] = max(self.rss.get(pid, 0.0), rss)
        if self._with_pss:
            self.pss = max(self.pss, sum(pss_mb(pid) for pid in self.pids))

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_EVERY_S)

    def start(self) -> None:
        self.sample()
        self._start_cpu = dict(self.cpu)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> tuple[float, float]:
        """CPU seconds used since start (all pids) and the summed peak RSS (MB)."""
        self.sample()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        used = sum(self.cpu.get(p, 0.0) - self._start_cpu.get(p, 0.0) for p in self.pids)
        return used, sum(self.rss.values())


def histogram_quantiles(text: str, name: str, label: str) -> dict[str, dict[str, float]]:
    """p50/p99/max-bucket of each series of a Prometheus histogram in ``/metrics`` text."""
    series: dict[str, list[tuple[float, int]]] = {}
    pattern = re.compile(rf'^{name}_bucket{{{label}="([^"]*)",le="([^"]+)"}} (\d+)$')
    for line in text.splitlines():
        if m := pattern.match(line):
            bound = float("inf") if m.group(2) == "+Inf" else float(m.group(2))
            series.setdefault(m.group(1), []).append((bound, int(m.group(3))))
    out: dict[str, dict[str, float]] = {}
    for value, buckets in series.items():
        total = buckets[-1][1] if buckets else 0
        if not total:
            continue

        p50 = next(b for b, n in buckets if n >= 0.5 * total)  # the bucket's upper bound
        p99 = next(b for b, n in buckets if n >= 0.99 * total)
        out[value] = {"count": total, "p50_le_s": p50, "p99_le_s": p99}
    return out


async def scrape_metrics(url: str) -> dict[str, Any]:
    """The writer-tick and event-loop-lag histograms, as bucket bounds of p50 and p99."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        text = await resp.text()
    return {
        "writer_tick": histogram_quantiles(text, "reelhouse_writer_tick_seconds", "phase"),
        "loop_lag": histogram_quantiles(text, "reelhouse_event_loop_lag_seconds", "loop"),
    }


async def wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    import aiohttp

    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"reelhouse exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise TimeoutError("reelhouse did not become healthy")


def finished_in_time(wall_s: float | None, duration_s: float) -> bool:
    """The real-time rule for one sender (a publisher, an ffmpeg process): done within
    1.1 x its media's length + 5 s (start-up and the last acks); None: it never finished."""
    return wall_s is not None and wall_s <= duration_s * 1.1 + 5


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# ---- the client process (one asyncio loop, N publishers) ---------------------------------


async def _client_main(args: argparse.Namespace) -> None:
    import aiohttp

    from ingest.publisher import Publisher
    from mixer.sources import MemoryClip

    clip = MemoryClip(args.clip)  # demuxed once, shared: the client spends its CPU on sending
    server, key, n = args.server, args.api_key, args.publishers
    url = f"{server}/v1/customers/bench/profiles/bench:processScreenRecordingSessionEvent"
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def event(body: dict[str, Any]) -> dict[str, Any]:
            async with http.post(url, json={"sessionEvent": body}, headers=headers) as resp:
                data: dict[str, Any] = await resp.json(content_type=None)
                if resp.status != 200:
                    raise RuntimeError(f"session event failed: {resp.status} {data}")
                return data

        async def one(i: int) -> dict[str, Any]:
            await asyncio.sleep(i * args.stagger)  # spread keyframes and connects
            started = await event({"eventType": "EVENT_TYPE_START", "userId": f"u{i}"})
            sid = started["sessionEvent"]["sessionId"]
            pub = Publisher(clip.source(), server=server, api_key=key, session_id=sid,
                            duration_s=args.duration, loop=True, session=http)  # fmt: skip
            t0 = time.monotonic()
            error = None
            try:
                await asyncio.wait_for(pub.publish(), args.duration + CLIENT_GRACE_S / 2)
            except TimeoutError:
                error = "TimeoutError: publishing did not finish in time"
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            result = pub.result()  # partial figures too, when it failed
            wall = time.monotonic() - t0
            with contextlib.suppress(Exception):
                end = {"eventType": "EVENT_TYPE_END", "userId": f"u{i}", "sessionId": sid}
                await asyncio.wait_for(event(end), 10.0)
            return {
                **({"error": error} if error else {}),
                "frames_sent": result.frames_sent,
                "frames_acked": result.frames_acked,
                "reconnects": result.reconnects,
                "wall_s": wall,
                "latencies": [round(x, 3) for x in result.ack_latencies_ms],
            }

        results = await asyncio.gather(*(one(i) for i in range(n)))
    json.dump(results, sys.stdout)


# ---- the driver ------------------------------------------------------------------------


@dataclass
class RunResult:
    publishers: int
    duration_s: float
    server_cpu_s_per_stream_s: float
    server_peak_rss_mb_per_stream: float
    server_peak_rss_mb: float
    server_peak_pss_mb_per_stream: float | None
    ack_p50_ms: float | None
    ack_p99_ms: float | None
    realtime_ok: bool
    frames_acked: int
    frames_expected: int
    errors: int
    ffmpeg_streams: int
    ffmpeg_cpu_s_per_stream_s: float | None
    ffmpeg_slowest_wall_s: float | None
    ffmpeg_realtime_ok: bool | None
    ratio_server_over_ffmpeg: float | None


def _terminate(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def run_server_part(
    args: argparse.Namespace, clip: Path, tmp: Path, run: int
) -> dict[str, Any]:
    port, key = free_port(), secrets.token_hex(16)
    server = f"http://127.0.0.1:{port}"
    reelhouse = ROOT / ".venv" / "bin" / "reelhouse"
    log = open(tmp / "server.log", "wb")  # noqa: ASYNC230 - closed in finally
    proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        [str(reelhouse), "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(tmp / "data"), "--api-key", key, "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    client: subprocess.Popen[bytes] | None = None
    try:
        await wait_healthy(server, proc)
        sampler = Sampler([proc.pid])
        sampler.start()
        t0 = time.monotonic()
        # the client is the only child reaped while it runs: its CPU is this difference
        client_cpu0 = children_cpu_s()
        client = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [sys.executable, __file__, "--client", "--server", server, "--api-key", key,
             "--publishers", str(args.publishers), "--duration", str(args.duration),
             "--clip", str(clip), "--stagger", str(args.stagger)],
            stdout=subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        limit = args.duration + args.publishers * args.stagger + CLIENT_GRACE_S
        out, _ = await asyncio.to_thread(client.communicate, timeout=limit)
        wall = time.monotonic() - t0
        client_cpu = children_cpu_s() - client_cpu0
        cpu, rss = await sampler.stop()
        server_metrics = await scrape_metrics(server)
    finally:
        if client is not None:
            _terminate(client)
        _terminate(proc)
        log.close()
        kept = SERVER_LOG_KEEP / f"reelhouse-bench-{args.publishers}-{run}.log"
        shutil.copyfile(tmp / "server.log", kept)
        print(f"server log: {kept}", file=sys.stderr)
    if client.returncode != 0:
        raise RuntimeError(f"the client process failed with {client.returncode}")
    per = json.loads(out)
    lat = [x for p in per for x in p.get("latencies", [])]
    acked = sum(p.get("frames_acked", 0) for p in per)
    expected = round(args.publishers * args.duration * (VIDEO_FPS + AUDIO_FPS))
    stream_s = args.publishers * args.duration
    return {
        "server_cpu_s": cpu,
        "wall_s": wall,
        "server_cpu_s_per_stream_s": cpu / stream_s,
        "client_cpu_s": client_cpu,
        "client_cpu_share": client_cpu / wall,
        "server_peak_rss_mb": rss,
        "server_peak_pss_mb": sampler.pss,
        "ack_p50_ms": _percentile(lat, 0.5),
        "ack_p99_ms": _percentile(lat, 0.99),
        "frames_acked": acked,
        "frames_expected": expected,
        "realtime_ok": acked >= REALTIME_TOLERANCE * expected
        and all(finished_in_time(p.get("wall_s"), args.duration) for p in per)
        and (_percentile(lat, 0.99) or 0.0) < REALTIME_ACK_P99_MS,
        "errors": sum(1 for p in per if "error" in p),
        "error_samples": [p["error"] for p in per if "error" in p][:3],
        "reconnects": sum(p.get("reconnects", 0) for p in per),
        "server_metrics": server_metrics,
        **scan_log(kept),
    }


async def run_ffmpeg_part(args: argparse.Namespace, clip: Path, tmp: Path) -> dict[str, Any]:
    n = args.publishers
    procs = []
    started = time.monotonic()
    walls: dict[int, float] = {}  # process index → seconds from the first start to its exit
    try:
        for i in range(n):
            out = tmp / f"ffmpeg-{i}"
            out.mkdir()
            # as reelhouse records: video copied; AAC-LC 64 kbit/s mono with the server's
            # coder; HLS in 4 s segments and an MP4 of the whole session
            cmd = ["ffmpeg", "-v", "error", "-nostdin", "-re", "-stream_loop", "-1",
                   "-i", str(clip), "-t", str(args.duration), "-map", "0:v", "-map", "0:a",
                   "-c:v", "copy", "-c:a", "aac", "-b:a", "64k", "-ac", "1",
                   "-aac_coder", AAC_CODER, "-f", "tee",
                   f"[f=hls:hls_time=4:hls_list_size=0]{out / 'index.m3u8'}"
                   f"|[f=mp4]{out / 'session.mp4'}"]  # fmt: skip
            procs.append(
                subprocess.Popen(  # noqa: ASYNC220 - returns at once
                    cmd,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        sampler = Sampler([p.pid for p in procs], pss=False)  # (no PSS reported for ffmpeg)
        sampler.start()
        deadline = time.monotonic() + args.duration + CLIENT_GRACE_S
        while len(walls) < n and time.monotonic() < deadline:
            sampler.sample()
            await asyncio.sleep(SAMPLE_EVERY_S)
            for i, p in enumerate(procs):
                if i not in walls and p.poll() is not None:
                    walls[i] = time.monotonic() - started
        cpu, rss = await sampler.stop()
    finally:
        for p in procs:
            _terminate(p)
    slowest = max(walls.values()) if len(walls) == n else None  # None: some never finished
    return {
        "ffmpeg_streams": n,
        "ffmpeg_slowest_wall_s": slowest,
        # the rule the publishers are held to (their ack latency aside)
        "ffmpeg_realtime_ok": finished_in_time(slowest, args.duration),
        "ffmpeg_cpu_s_per_stream_s": cpu / (n * args.duration) if n else None,
        "ffmpeg_peak_rss_mb_per_stream": rss / n if n else None,
    }


async def driver(args: argparse.Namespace) -> None:
    if not shutil.which("ffmpeg"):
        sys.exit("ffmpeg is needed (apt-get install ffmpeg)")
    clip = await asyncio.to_thread(make_clip)
    runs = []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="reelhouse-bench-") as tmpdir:
            tmp = Path(tmpdir)
            server = await run_server_part(args, clip, tmp, r + 1)
            ff = await run_ffmpeg_part(args, clip, tmp) if not args.no_ffmpeg else {}
        runs.append({**server, **ff})
        print(f"run {r + 1}/{args.repeats}: {json.dumps(runs[-1])}", flush=True)

    def med(name: str) -> Any:
        values = [x[name] for x in runs if x.get(name) is not None]
        return statistics.median(values) if values else None

    n = args.publishers
    server_cpu, ff_cpu = med("server_cpu_s_per_stream_s"), med("ffmpeg_cpu_s_per_stream_s")
    result = RunResult(
        publishers=n,
        duration_s=args.duration,
        server_cpu_s_per_stream_s=server_cpu,
        server_peak_rss_mb_per_stream=med("server_peak_rss_mb") / n,
        server_peak_rss_mb=med("server_peak_rss_mb"),
        server_peak_pss_mb_per_stream=(med("server_peak_pss_mb") or 0) / n or None,
        ack_p50_ms=med("ack_p50_ms"),
        ack_p99_ms=med("ack_p99_ms"),
        realtime_ok=all(x["realtime_ok"] for x in runs),
        frames_acked=int(med("frames_acked")),
        frames_expected=int(med("frames_expected")),
        errors=max(x["errors"] for x in runs),
        ffmpeg_streams=0 if args.no_ffmpeg else n,
        ffmpeg_cpu_s_per_stream_s=ff_cpu,
        ffmpeg_slowest_wall_s=med("ffmpeg_slowest_wall_s"),
        ffmpeg_realtime_ok=None if args.no_ffmpeg else all(x["ffmpeg_realtime_ok"] for x in runs),
        ratio_server_over_ffmpeg=server_cpu / ff_cpu if ff_cpu else None,
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        **asdict(result),
        "date": time.strftime("%Y-%m-%d"),
        "cpu_count": os.cpu_count(),
        "repeats": runs,
    }
    (RESULTS / f"ingest-{n}.json").write_text(json.dumps(out, indent=2) + "\n")
    write_table()
    print(json.dumps(asdict(result), indent=2))


README_HEAD = """# Ingest benchmark results

`bench/ingest.py --publishers N --duration S`: N WebSocket publishers, one client process, each
streaming a 1280x720 15 fps H.264 + mono Opus clip (20 ms frames) in real time into one
`reelhouse serve`, against N `ffmpeg -re -stream_loop -1 -i clip -c:v copy
-c:a aac -b:a 64k -ac 1 -aac_coder {coder} -f tee "[f=hls]…|[f=mp4]…"` processes (HLS and a
whole-session MP4, as reelhouse writes, with the AAC coder of reelhouse's default settings). Machine: {cpus} cores, shared by the server, the publishers' client
process and (afterwards) ffmpeg; all traffic on 127.0.0.1. The table is rebuilt from
`ingest-<N>.json` after every run; with `--repeats` the figures are medians.

| column | meaning |
|---|---|
| date | day of the run |
| N | concurrent publishers (sessions) |
| s | seconds of media each publisher sends |
| server CPU-s/stream-s | server process user+system CPU while publishing (from the first connect until the last publisher finished), over N x s |
| peak RSS MB/stream | server peak resident memory (VmHWM, summed over its processes: pages the writer lanes share are counted in each), over N |
| peak PSS MB/stream | the largest sum of proportional set sizes seen (sampled every 0.5 s; shared pages split between processes), over N |
| ack p50 / p99 ms | time from sending a media frame to the cumulative ack that covers it (frames never acked are not counted: see real time) |
| real time | yes when ≥ 97 % of the expected frames were acked, every publisher finished within 1.1 x s + 5 s and the ack p99 was under 1 s (a server acking seconds late is not keeping up); acked/expected frames |
| errors | publishers that ended with an error (e.g. no close after bye within 30 s) |
| client cores | CPU of the publishers' client process over the wall time (it shares the 2 cores) |
| ffmpeg CPU-s/stream-s | the same measure for the N ffmpeg processes |
| ffmpeg real time | yes when every ffmpeg process finished within 1.1 x s + 5 s (the publishers' rule); the slowest one's wall seconds |
| ratio | server over ffmpeg; the target is ≤ 1 |

| date | N | s | server CPU-s/stream-s | peak RSS MB/stream | peak PSS MB/stream | ack p50 ms | ack p99 ms | real time | errors | client cores | ffmpeg CPU-s/stream-s | ffmpeg real time | ratio |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
"""  # noqa: E501


def write_table() -> None:
    """Rebuild bench/results/README.md from every ingest-<N>.json there."""

    def fmt(x: float | None, spec: str = ".4f") -> str:
        return "-" if x is None else format(x, spec)

    def ffmpeg_rt(r: dict[str, Any]) -> str:
        ok, wall = r.get("ffmpeg_realtime_ok"), r.get("ffmpeg_slowest_wall_s")
        if ok is None:
            return "-"
        return f"{'yes' if ok else 'NO'} ({fmt(wall, '.1f')} s)"

    rows = []
    for path in RESULTS.glob("ingest-*.json"):
        r = json.loads(path.read_text())
        client = [x["client_cpu_share"] for x in r["repeats"] if "client_cpu_share" in x]
        rows.append((r["publishers"], (
            f"| {r.get('date', '-')} | {r['publishers']} | {r['duration_s']:g} | "
            f"{fmt(r['server_cpu_s_per_stream_s'])} | "
            f"{fmt(r['server_peak_rss_mb_per_stream'], '.1f')} | "
            f"{fmt(r.get('server_peak_pss_mb_per_stream'), '.1f')} | "
            f"{fmt(r['ack_p50_ms'], '.1f')} | "
            f"{fmt(r['ack_p99_ms'], '.1f')} | {'yes' if r['realtime_ok'] else 'NO'} "
            f"({r['frames_acked']}/{r['frames_expected']}) | {r['errors']} | "
            f"{fmt(statistics.median(client) if client else None, '.2f')} | "
            f"{fmt(r['ffmpeg_cpu_s_per_stream_s'])} | {ffmpeg_rt(r)} | "
            f"{fmt(r['ratio_server_over_ffmpeg'], '.2f')} |"
        )))  # fmt: skip
    head = README_HEAD.format(cpus=os.cpu_count(), coder=AAC_CODER)
    body = "\n".join(row for _, row in sorted(rows))
    (RESULTS / "README.md").write_text(head + body + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--publishers", type=int, default=10)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of media per publisher")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--stagger", type=float, default=0.02, help="seconds between publisher starts")
    p.add_argument("--no-ffmpeg", action="store_true", help="skip the ffmpeg comparison")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--server", help=argparse.SUPPRESS)
    p.add_argument("--api-key", help=argparse.SUPPRESS)
    p.add_argument("--clip", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        # on uvloop, as `reelhouse publish` runs: the client shares the machine with the server
        uvloop.run(_client_main(args))
    else:
        asyncio.run(driver(args))


if __name__ == "__main__":
    main()
