"""Bearer API keys: the development credential from settings or first start, and keys in the
metadata store (only their SHA-256 is stored)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from storage.durable import fsync_dir, temp_path_for
from storage.meta import ApiKeyRow, MetaStore

CREDENTIALS_FILE = "credentials.json"
KEY_BYTES = 24
# The development key acts for this tenant and user, so `reelhouse serve` works out of the box;
# real tenants get keys from `reelhouse apikey create`.
DEV_TENANT_ID = "00000000-0000-0000-0000-000000000000"
DEV_USER_ID = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid key acts for."""

    tenant_id: str
    user_id: str


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
    if not path.exists():
        creds = {"api_key": new_key(), "signing_secret": secrets.token_hex(32)}
        data_dir.mkdir(parents=True, exist_ok=True)
        # written whole under a temporary name, then linked into place: a crash leaves no
        # empty file behind, and of two processes making it at once one wins, whole
        tmp = temp_path_for(path)
        try:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                json.dump(creds, f)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
            fsync_dir(data_dir)
            return creds, True
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    try:
        creds = json.loads(path.read_text())
        if not isinstance(creds, dict) or not all(
            isinstance(creds.get(k), str) for k in ("api_key", "signing_secret")
        ):
            raise ValueError("api_key and signing_secret must be strings")
    except ValueError as exc:  # (JSONDecodeError too)
        raise ValueError(
            f"{path} is damaged ({exc}): restore it, or remove it for new keys"
        ) from None
    return creds, False


class ApiKeys:
    """Checks bearer keys: the server's own key (``[auth] api_key``, or the development key
    made at first start) for the operator's APIs, the screen recorder sessions and ingest;
    that key or a tenant's (the metadata store's) for the recordings API."""

    def __init__(self, dev_key: str, meta: MetaStore) -> None:
        self._dev_hash = hash_key(dev_key)
        self._meta = meta

    async def check(self, key: str) -> bool:
        """Whether ``key`` is a valid API key (the server's or a tenant's)."""
        return await self.identify(key) is not None

    async def check_server(self, key: str) -> bool:
        """Whether ``key`` is the server's own key. A tenant's key (the recordings API's,
        handed to a browser extension's users) must not reach every customer's sessions."""
        return hmac.compare_digest(hash_key(key), self._dev_hash)

    async def check_server_header(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the server's own key as ``Bearer``."""
        key = bearer_key(header)
        return key is not None and await self.check_server(key)

    async def identify(self, key: str) -> Principal | None:
        """The tenant and user ``key`` belongs to, or ``None`` for an unknown key."""
        digest = hash_key(key)
        if hmac.compare_digest(digest, self._dev_hash):
            return Principal(DEV_TENANT_ID, DEV_USER_ID)
        row = await self._meta.find_api_key(digest)
        return None if row is None else Principal(row.tenant_id, row.user_id)

    async def identify_header(self, header: str | None) -> Principal | None:
        """The principal of an ``Authorization: Bearer KEY`` header, or ``None``."""
        key = bearer_key(header)
        return None if key is None else await self.identify(key)


def bearer_key(header: str | None) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header (the scheme in any case), or None."""
    scheme, _, key = (header or "").partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


async def create_tenant_key(
    meta: MetaStore, tenant: str, user: str | None = None, name: str = ""
) -> tuple[str, Principal]:
    """Make a key for ``tenant`` and ``user`` (UUIDs or names, created when missing; no user
    means a new one); returns the key, shown once: only its hash is stored."""
    tenant_id = await meta.ensure_tenant(tenant)
    user_id = await meta.ensure_user(tenant_id, user)
    key = new_key()
    await meta.add_api_key(ApiKeyRow(hash_key(key), name, tenant_id, user_id, datetime.now(UTC)))
    return key, Principal(tenant_id, user_id)
