"""``reelhouse apikey create``: a key made beside a running server works at once, for the
tenant and user it names; names map to the same ids every time."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from api.auth import DEV_TENANT_ID


async def apikey(data_dir: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "api.cli", "apikey", "create", "--data-dir", str(data_dir), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode().strip(), err.decode().strip()


async def test_key_made_while_the_server_runs(server: Any) -> None:
    rc, key, err = await apikey(server.data_dir, "--tenant", "acme", "--user", "alice")
    assert rc == 0 and key.startswith("rh_") and "\n" not in key
    _, tenant_id, _, user_id = err.split()
    uuid.UUID(tenant_id), uuid.UUID(user_id)
    rc, other, err2 = await apikey(server.data_dir, "--tenant", "acme", "--user", "alice")
    assert other != key and err2 == err  # same names, same ids
    rc, _, err3 = await apikey(server.data_dir, "--tenant", "acme")
    assert err3.split()[1] == tenant_id and err3.split()[3] != user_id  # a new user
    async with aiohttp.ClientSession() as http:
        async with http.post(
            server.url + "/v1/recordings",
            json={"started_at": "2026-05-04T10:00:00Z", "events": []},
            headers={"Authorization": f"Bearer {key}"},
        ) as resp:
            assert resp.status == 201
            rid = (await resp.json())["id"]
        async with http.get(
            f"{server.url}/v1/recordings/{rid}", headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            detail = await resp.json()
        assert (detail["tenant_id"], detail["user_id"]) == (tenant_id, user_id)
        assert (detail["event_count"], detail["duration_ms"]) == (0, 0)
        async with http.get(server.url + "/v1/recordings", headers=server.auth) as resp:
            assert resp.status == 200  # the development key acts for its own tenant
            assert (await resp.json())["recordings"] == []
    assert DEV_TENANT_ID != tenant_id


async def test_key_without_a_server(tmp_path: Path) -> None:
    tenant = str(uuid.uuid4())
    rc, key, err = await apikey(tmp_path / "fresh", "--tenant", tenant)
    assert rc == 0 and key and err.split()[1] == tenant
    rc, _, err = await apikey(tmp_path / "fresh", "--tenant", "other", "--user", err.split()[3])
    assert rc == 2 and "another tenant" in err


async def test_serve_prints_the_development_key_once(tmp_path: Path) -> None:
    """The generated key goes to stdout when it is made; later starts name its file instead
    (a service's stdout is often kept in a log store)."""
    data = tmp_path / "data"
    said = []
    for _ in range(2):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "api.cli", "serve", "--host", "127.0.0.1", "--port", "0",
            "--data-dir", str(data),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.stdout is not None
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 30)).decode() for _ in range(3)]
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        said.append(lines[2])
    key = json.loads((data / "credentials.json").read_text())["api_key"]
    assert said[0].startswith("development API key: ") and key in said[0]
    assert key not in said[1] and str(data / "credentials.json") in said[1]  # (tmp_path: absolute)


def test_credentials_are_made_whole_and_once(tmp_path: Path) -> None:
    """Made by several processes at once (serve, ``apikey create``), one set wins for all;
    the file is linked into place whole, so a crash leaves none rather than an empty one."""
    from concurrent.futures import ThreadPoolExecutor

    from api.auth import CREDENTIALS_FILE, load_or_create_credentials

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(load_or_create_credentials, [tmp_path] * 8))
    assert len({json.dumps(creds, sort_keys=True) for creds, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert [p.name for p in tmp_path.iterdir()] == [CREDENTIALS_FILE]  # (no temporary left)
    assert (tmp_path / CREDENTIALS_FILE).stat().st_mode & 0o777 == 0o600


async def test_serve_with_damaged_credentials_says_so(tmp_path: Path) -> None:
    (tmp_path / "credentials.json").write_text("")  # (what a crash mid-write used to leave)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "api.cli", "serve", "--port", "0", "--data-dir", str(tmp_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    said = err.decode().splitlines()[-1]
    assert said.startswith("reelhouse: cannot start: credentials: ") and "damaged" in said
