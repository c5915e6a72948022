"""Bearer API keys: the development credential from settings or first start, and keys in the
metadata store (only their SHA-256 is stored)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from storage.meta import MetaStore

CREDENTIALS_FILE = "credentials.json"
KEY_BYTES = 24


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(prefix: str = "rh_") -> str:
    """A fresh random key."""
    return prefix + secrets.token_urlsafe(KEY_BYTES)


def load_or_create_credentials(data_dir: Path) -> tuple[dict[str, str], bool]:
    """The development key and URL-signing secret in ``<data_dir>/credentials.json`` (mode
    0600), made on first start; returns them and whether they were created now. Blocking:
    run it in a thread."""
    path = data_dir / CREDENTIALS_FILE
    if path.exists():
        return json.loads(path.read_text()), False
    creds = {"api_key": new_key(), "signing_secret": secrets.token_hex(32)}
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f)
        f.flush()
        os.fsync(f.fileno())
    return creds, True


class ApiKeys:
    """Checks bearer keys against the development key and the metadata store."""

    def __init__(self, dev_key: str, meta: MetaStore) -> None:
        self._dev_hash = hash_key(dev_key)
        self._meta = meta

    async def check(self, key: str) -> bool:
        """Whether ``key`` is a valid API key."""
        digest = hash_key(key)
        if hmac.compare_digest(digest, self._dev_hash):
            return True
        return await self._meta.find_api_key(digest) is not None

    async def check_header(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries a valid ``Bearer`` key."""
        if not header:
            return False
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        return await self.check(key.strip())
