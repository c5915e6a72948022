"""Customers of the cloud recording API: made by the CLI (server running or not), checked with
HTTP Basic Auth against the stored hash only."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

from api.customers import CustomerAuth, create_customer
from storage.meta_sqlite import SqliteMetaStore


def basic(customer_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{customer_id}:{secret}".encode()).decode()


async def test_basic_auth_accepts_only_the_pair(tmp_path: Path) -> None:
    meta = SqliteMetaStore(tmp_path / "meta.sqlite3")
    await meta.open()
    try:
        customer_id, secret = await create_customer(meta)
        auth = CustomerAuth(meta)
        assert await auth.check(basic(customer_id, secret)) == customer_id
        for header in (
            None,
            "",
            basic(customer_id, "wrong"),
            basic("nobody", secret),
            "Bearer " + secret,
            "Basic !!!not-base64",
            "Basic " + base64.b64encode(b"no-colon").decode(),
        ):
            assert await auth.check(header) is None, header
        row = await meta.get_customer(customer_id)
        assert row is not None and secret not in row.secret_hash  # only the hash is kept
    finally:
        await meta.aclose()


def test_cli_creates_a_customer(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "customer", "create", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert len(lines["customer id"]) == 32 and len(lines["customer secret"]) == 32
    # the folder held no server data: the note names it, so a mistyped --data-dir shows
    assert f"{tmp_path} held no server data" in done.stderr
    again = subprocess.run(
        [sys.executable, "-m", "api.cli", "customer", "create", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=True, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert again.stderr == ""  # the folder has a server's data now
