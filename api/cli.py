"""The ``reelhouse`` command: ``serve`` runs the server, ``publish`` streams media to one,
``apikey create`` makes a tenant's API key."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import resource
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from storage.durable import DirectoryInUse, lock_directory
from storage.errors import StorageError

from .logs import setup_logging
from .settings import load_settings

log = logging.getLogger("reelhouse")

NOFILE_CEILING = 1 << 20  # when the hard limit is unlimited: Linux's default fs.nr_open


def _serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    http: dict[str, Any] = {}
    if args.host is not None:
        http["host"] = args.host
    if args.port is not None:
        http["port"] = args.port
    if http:
        out["http"] = http
    if args.data_dir is not None:
        out["data_dir"] = args.data_dir
    if args.api_key is not None:
        out["auth"] = {"api_key": args.api_key}
    if args.log_level is not None:
        out["log_level"] = args.log_level
    return out


# descriptors a server needs besides its ingest connections: segments, WAL and spool files,
# SQLite, the lanes' pipes, HTTP requests, WebRTC's sockets
FILES_BESIDE_CONNECTIONS = 1024


def raise_open_file_limit() -> int:
    """Lift the soft limit on open files to the hard one, as Go's runtime and nginx's
    ``worker_rlimit_nofile`` do: every connection is a descriptor, and so is every segment,
    WAL and spool file in use; at the usual soft 1024 a few hundred publishers made the next
    accept, and the next spooled segment of every session, fail with EMFILE. Returns the
    limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # (a sandbox that forbids it: keep the soft one)
            log.warning("the open files limit stays at %d: %s", soft, exc)
    return int(soft)


async def _serve(args: argparse.Namespace) -> int:
    from .app import create_app  # imported late: `reelhouse publish` needs none of it
    from .auth import CREDENTIALS_FILE, load_or_create_credentials

    try:
        settings = load_settings(args.config, overrides=_serve_overrides(args))
    except (ValueError, OSError) as exc:  # a value out of range, a bad or missing TOML file
        print(f"reelhouse: cannot start: configuration: {exc}", file=sys.stderr, flush=True)
        return 2
    setup_logging(settings.log_level, settings.log_json)
    files = raise_open_file_limit()
    log.info("open files: at most %d at once", files)
    if files < settings.ingest.max_connections + FILES_BESIDE_CONNECTIONS:
        log.warning(
            "open files are limited to %d: too few for [ingest] max_connections = %d and the "
            "files recording keeps open; raise the hard limit (ulimit -Hn) or lower it",
            files,
            settings.ingest.max_connections,
        )
    try:
        # before anything reads the directory: a second server on it would replay (and then
        # delete) the running one's write-ahead log and rewrite its open segments
        await asyncio.to_thread(lock_directory, settings.data_dir)
    except DirectoryInUse as exc:
        print(f"reelhouse: cannot start: data directory {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        creds, created = await asyncio.to_thread(load_or_create_credentials, settings.data_dir)
    except (ValueError, OSError) as exc:  # a damaged file, a data directory we may not write
        print(f"reelhouse: cannot start: credentials: {exc}", file=sys.stderr, flush=True)
        return 2
    # from here on a stop is heard, during the start too (recovery, a bucket's check): as
    # PID 1 of a container the server would otherwise ignore SIGTERM until it was killed
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        shutdown_timeout=settings.http.shutdown_timeout_s,
        keepalive_timeout=settings.http.keepalive_timeout_s,
        access_log=None,
    )
    setup = asyncio.ensure_future(runner.setup())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({setup, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not setup.done():  # stopped during a start that takes long (a bucket that never answers)
        setup.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await setup  # (what recovery began stays on disk for the next start)
        await runner.cleanup()
        return 0
    try:
        setup.result()
    except (StorageError, ValueError) as exc:  # a wrong bucket, key or setting: say which
        print(f"reelhouse: cannot start: {exc}", file=sys.stderr, flush=True)
        await runner.cleanup()
        return 2
    site = web.TCPSite(runner, settings.http.host, settings.http.port)
    try:
        await site.start()
    except OSError as exc:  # the port is taken, the address is not this machine's
        where = f"{settings.http.host}:{settings.http.port}"
        print(f"reelhouse: cannot start: cannot listen on {where}: {exc}", file=sys.stderr)
        await runner.cleanup()
        return 2
    if stop.is_set():  # (stopped while starting: done now, the start made safe)
        await runner.cleanup()
        return 0
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    key = settings.auth.api_key or creds["api_key"]
    # the one place that prints: people (and scripts) read the URL and key from here
    print(f"reelhouse listening on {url}", flush=True)
    print(f"data directory: {settings.data_dir.resolve()}", flush=True)
    if not settings.auth.api_key and created:  # (once: stdout often ends up in log stores)
        print(f"development API key: {key}  (Authorization: Bearer {key})", flush=True)
    elif not settings.auth.api_key:
        stored = (settings.data_dir / CREDENTIALS_FILE).resolve()
        print(f"development API key: the api_key of {stored}", flush=True)
    await stop.wait()
    log.info("shutting down: closing connections; open segments stay in the write-ahead log")
    await runner.cleanup()
    return 0


async def _publish(args: argparse.Namespace) -> int:
    import av

    from ingest.publisher import Channel, publish

    def on_event(name: str, info: dict[str, Any]) -> None:
        print(
            json.dumps(
                {
                    "event": name,
                    **{
                        k: v
                        for k, v in info.items()
                        if isinstance(v, (str, int, float, bool, type(None)))
                    },
                }
            ),
            flush=True,
        )

    if args.duration is None:
        print(
            "publishing until the source ends, Ctrl-C, or (a session) END or stop; "
            "--duration S stops sooner",
            file=sys.stderr,
            flush=True,
        )
    channel = None
    if args.appid:
        channel = Channel(args.appid, args.cname, args.uid, args.token or "")
    try:
        result = await publish(
            args.source,
            server=args.server,
            api_key=args.api_key or "",
            session_id=args.session,
            platform_call_id=args.platform_call_id,
            agent_platform_id=args.agent_platform_id,
            user_id=args.user_id,
            duration_s=args.duration,
            codec=args.codec,
            realtime=not args.fast,
            on_event=on_event,
            channel=channel,
        )
    except (OSError, av.FFmpegError) as exc:
        # refused (PublishError), the server stayed away, or the source cannot be read: one
        # line that says which, not a traceback
        print(f"reelhouse: publish: {exc}", file=sys.stderr, flush=True)
        return 2
    print(
        json.dumps(
            {
                "event": "done",
                **({"uid": result.uid} if channel else {"session_id": result.session_id}),
                "frames_sent": result.frames_sent,
                "frames_acked": result.frames_acked,
                "reconnects": result.reconnects,
            }
        ),
        flush=True,
    )
    return 0 if result.frames_acked == result.frames_sent else 1


async def _apikey(args: argparse.Namespace) -> int:
    """Make a key straight in the metadata file: SQLite in WAL mode lets this run beside a
    server that has the same file open, and works when none is running."""
    from storage.errors import MetaConflict
    from storage.meta_sqlite import SqliteMetaStore

    from .app import META_FILE
    from .auth import create_tenant_key

    overrides = {} if args.data_dir is None else {"data_dir": args.data_dir}
    settings = load_settings(args.config, overrides=overrides)
    existed = (settings.data_dir / META_FILE).exists()
    meta = SqliteMetaStore(settings.data_dir / META_FILE)
    await meta.open()
    try:
        key, who = await create_tenant_key(meta, args.tenant, args.user, args.name)
    except MetaConflict as exc:
        print(f"reelhouse: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        await meta.aclose()
    print(key, flush=True)  # stdout holds the key alone, for scripts
    print(f"tenant {who.tenant_id} user {who.user_id}", file=sys.stderr, flush=True)
    _note_new_data(settings.data_dir, existed)
    return 0


def _note_new_data(data_dir: Path, existed: bool) -> None:
    """Say so when a command made the metadata file: a mistyped ``--data-dir`` (or a command
    run from another folder) would otherwise give credentials no running server knows."""
    if not existed:
        print(
            f"reelhouse: note: {data_dir.resolve()} held no server data; it was made there, and "
            f"only a server started with --data-dir {data_dir} knows what this made",
            file=sys.stderr,
            flush=True,
        )


async def _open_meta(args: argparse.Namespace, *, must_exist: bool = False) -> Any:
    """The metadata file of ``--data-dir``; ``must_exist`` refuses to make a new, empty one
    (a command that only reads, given the wrong folder, would otherwise answer "not found")."""
    from storage.meta_sqlite import SqliteMetaStore

    from .app import META_FILE

    overrides = {} if args.data_dir is None else {"data_dir": args.data_dir}
    settings = load_settings(getattr(args, "config", None), overrides=overrides)
    path = settings.data_dir / META_FILE
    if not path.exists():
        if must_exist:
            raise _NoData(
                f"no server data in {settings.data_dir.resolve()} (no {META_FILE}): "
                "give --data-dir the server's data directory"
            )
        _note_new_data(settings.data_dir, existed=False)
    meta = SqliteMetaStore(path)
    await meta.open()
    return meta


class _NoData(Exception):
    """``--data-dir`` names a folder no server has used."""


async def _app(args: argparse.Namespace) -> int:
    """``app create``: a new app, made straight in the metadata file (server running or not)."""
    from .apps import create_app_row

    meta = await _open_meta(args)
    try:
        row = await create_app_row(
            meta, token_required=not args.no_token, webhook_url=args.webhook_url or ""
        )
    finally:
        await meta.aclose()
    print(f"appid: {row.appid}", flush=True)
    print(f"certificate: {row.certificate}", flush=True)
    if not row.token_required:
        print("tokens: not required (publishers name their uid with ?uid=)", flush=True)
    if row.webhook_url:
        print(f"webhook: {row.webhook_url}", flush=True)
        print(f"webhook secret: {row.webhook_secret}", flush=True)
    return 0


async def _token(args: argparse.Namespace) -> int:
    """``token``: a channel token for a uid, signed with the app's certificate."""
    from ingest.tokens import Role, TokenError, mint

    try:
        meta = await _open_meta(args, must_exist=True)
    except _NoData as exc:
        print(f"reelhouse: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        row = await meta.get_app(args.appid)
    finally:
        await meta.aclose()
    if row is None:
        print(
            f"reelhouse: app {args.appid} not found in {meta.path.parent.resolve()}",
            file=sys.stderr,
            flush=True,
        )
        return 2
    try:
        token = mint(row.certificate, row.appid, args.cname, args.uid, Role(args.role), args.ttl)
    except TokenError as exc:
        print(f"reelhouse: {exc}", file=sys.stderr, flush=True)
        return 2
    print(token, flush=True)
    return 0


async def _customer(args: argparse.Namespace) -> int:
    """``customer create``: a cloud recording API customer id and secret (Basic Auth)."""
    from .customers import create_customer

    meta = await _open_meta(args)
    try:
        customer_id, secret = await create_customer(meta)
    finally:
        await meta.aclose()
    print(f"customer id: {customer_id}", flush=True)
    print(f"customer secret: {secret}", flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reelhouse", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the server")
    s.add_argument("--host", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default 8080; 0 picks a free one)")
    s.add_argument(
        "--data-dir", type=Path, help="where metadata, spool and objects live (default ./data)"
    )
    s.add_argument("--api-key", help="fix the development API key instead of generating one")
    s.add_argument("--config", type=Path, help="TOML settings file (see README)")
    s.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")

    pub = sub.add_parser("publish", help="stream a file or a test pattern over the ingest protocol")
    pub.add_argument(
        "source", help="a media file, or 'testsrc' for a 1280x720 15 fps pattern with a tone"
    )
    pub.add_argument("--server", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    pub.add_argument("--api-key", help="the server's API key (Bearer credential) for a session")
    pub.add_argument("--session", help="an existing session id to publish into")
    pub.add_argument(
        "--platform-call-id",
        help="join the open session with this platformCallId, or wait for a START that names it",
    )
    pub.add_argument(
        "--agent-platform-id", help="as --platform-call-id, for the event's agentPlatformId"
    )
    pub.add_argument("--user-id", help="as --platform-call-id, for the event's userId")
    pub.add_argument(
        "--duration",
        type=float,
        help="stop after this many seconds of media (default: until END, stop or Ctrl-C)",
    )
    pub.add_argument(
        "--appid", help="publish into a channel of this app instead of a session (with --cname)"
    )
    pub.add_argument("--cname", help="the channel's name")
    pub.add_argument("--uid", help="the publisher's uid in the channel (default: one is given)")
    pub.add_argument(
        "--token", help="a channel token for the uid (reelhouse token); none for a --no-token app"
    )
    pub.add_argument(
        "--codec", choices=("h264", "vp8"), default="h264", help="video codec for testsrc"
    )
    pub.add_argument(
        "--fast", action="store_true", help="send as fast as acks allow, not in real time"
    )

    key = sub.add_parser("apikey", help="manage API keys of tenants")
    key_sub = key.add_subparsers(dest="apikey_command", required=True)
    create = key_sub.add_parser(
        "create", help="print a new key for a tenant and user (the server may be running)"
    )
    create.add_argument(
        "--tenant", required=True, help="tenant UUID or name (created when missing)"
    )
    create.add_argument("--user", help="user UUID or name within the tenant (default: a new user)")
    create.add_argument("--name", default="", help="a label kept with the key")
    create.add_argument("--data-dir", type=Path, help="the server's data directory")
    create.add_argument("--config", type=Path, help="TOML settings file (for its data_dir)")

    app = sub.add_parser("app", help="manage apps of the channel API")
    app_sub = app.add_subparsers(dest="app_command", required=True)
    app_create = app_sub.add_parser("create", help="print a new appid and app certificate")
    app_create.add_argument("--data-dir", type=Path, help="the server's data directory")
    app_create.add_argument(
        "--no-token", action="store_true", help="publishers need no token (development)"
    )
    app_create.add_argument(
        "--webhook-url", help="where cloud recording notifications of this app are sent"
    )

    cust = sub.add_parser("customer", help="manage customers of the cloud recording API")
    cust_sub = cust.add_subparsers(dest="customer_command", required=True)
    cust_create = cust_sub.add_parser("create", help="print a new customer id and secret")
    cust_create.add_argument("--data-dir", type=Path, help="the server's data directory")

    tok = sub.add_parser("token", help="print a channel token for a uid")
    tok.add_argument("--appid", required=True)
    tok.add_argument("--cname", required=True, help="channel name")
    tok.add_argument("--uid", required=True)
    tok.add_argument("--ttl", type=int, default=24 * 3600, help="seconds (default a day)")
    tok.add_argument("--role", choices=("publisher", "subscriber"), default="publisher")
    tok.add_argument("--data-dir", type=Path, help="the server's data directory")
    return p


def _check_publish(args: argparse.Namespace) -> None:
    session = args.session or args.platform_call_id or args.agent_platform_id or args.user_id
    if args.appid or args.cname:
        if not (args.appid and args.cname):
            _parser().error("publishing into a channel needs both --appid and --cname")
        if session:
            _parser().error("publish goes into a channel (--appid) or a session, not both")
        return
    if args.uid or args.token:
        _parser().error("--uid and --token are for a channel (--appid, --cname)")
    if not session:
        _parser().error(
            "publish needs --session, one of --platform-call-id/--agent-platform-id/--user-id, "
            "or a channel (--appid and --cname)"
        )
    if not args.api_key:
        _parser().error("publishing into a session needs --api-key")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``reelhouse`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "publish":
        _check_publish(args)
    runners = {
        "serve": _serve,
        "publish": _publish,
        "apikey": _apikey,
        "app": _app,
        "token": _token,
        "customer": _customer,
    }
    runner = runners[args.command]
    run: Callable[[Coroutine[Any, Any, int]], int] = asyncio.run
    with contextlib.suppress(ImportError):  # uvloop is a dependency wherever it builds
        import uvloop

        run = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        return run(runner(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
