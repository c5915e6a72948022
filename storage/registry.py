"""Object stores by id: the server's default store, and one per ``storageConfig`` a request named.

The spool records a store id with every file it holds, so a file waiting for a user's bucket
still reaches that bucket after a restart: each registered config is kept in
``<directory>/<id>.json`` (mode 0600: it holds the user's keys) until it is forgotten.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .durable import ensure_dir, remove_quietly, write_atomic
from .errors import StoreRefused
from .objects import ObjectStore
from .s3 import S3ObjectStore
from .vendors import StorageConfig, check_public_endpoint, parse_storage_config

log = logging.getLogger(__name__)

DEFAULT_STORE_ID = "default"
ID_PREFIX = "sc-"


def store_id_for(config: StorageConfig) -> str:
    """The same config always gets the same id (so a restart finds its store again)."""
    canonical = json.dumps(config.to_json(), sort_keys=True, separators=(",", ":"))
    return ID_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()[:24]


class StoreRegistry:
    """Resolves store ids to open stores; what the spool's ``resolve_store`` calls."""

    def __init__(
        self,
        directory: Path,
        default: ObjectStore,
        tuning: Mapping[str, Any] | None = None,
        *,
        private_endpoints: bool = False,
    ) -> None:
        self.directory = directory
        self.default = default
        # a user's endpoint (S3-compatible storage) may name a non-public address
        self._private_endpoints = private_endpoints
        self._tuning = dict(tuning or {})  # S3Config timeouts and part sizes for user stores
        self._configs: dict[str, StorageConfig] = {}
        self._stores: dict[str, S3ObjectStore] = {}
        self._registering: dict[str, int] = {}  # ids a register() is under way for
        self._files = asyncio.Lock()  # a config's file is written or removed by one at a time

    async def start(self) -> None:
        """Load the configs registered before a restart."""
        self._configs.update(await asyncio.to_thread(self._load_sync))

    def _load_sync(self) -> dict[str, StorageConfig]:
        ensure_dir(self.directory)
        found: dict[str, StorageConfig] = {}
        for entry in os.scandir(self.directory):
            if not (entry.name.startswith(ID_PREFIX) and entry.name.endswith(".json")):
                continue
            try:
                raw = json.loads(Path(entry.path).read_bytes())
                # an expired STS token must not make a waiting file unreachable: keep it
                found[entry.name[: -len(".json")]] = parse_storage_config(raw, now=0)
            except (ValueError, OSError) as exc:
                log.error("store config %s unreadable, left in place: %s", entry.path, exc)
        return found

    async def register(self, config: StorageConfig, *, check: bool = True) -> str:
        """Keep ``config`` and return its id; with ``check``, prove the bucket takes writes.

        A failed check raises ``StoreRefused`` (the bucket or keys are wrong) or
        ``StoreUnavailable`` (the endpoint cannot be reached) and registers nothing.
        """
        if check and config.endpoint is not None and not self._private_endpoints:
            await asyncio.to_thread(check_public_endpoint, config.endpoint)
        store_id = store_id_for(config)
        self._registering[store_id] = self._registering.get(store_id, 0) + 1  # see forget()
        try:
            store = self._stores.get(store_id) or S3ObjectStore(config.to_s3(**self._tuning))
            if check:
                try:
                    await store.check()
                except BaseException:
                    if self._stores.get(store_id) is not store:
                        await store.aclose()
                    raise
            async with self._files:
                if store_id not in self._configs:
                    data = json.dumps(config.to_json()).encode()
                    path = self.directory / f"{store_id}.json"
                    await asyncio.to_thread(write_atomic, path, data, 0o600)
                    self._configs[store_id] = config
            if self._stores.setdefault(store_id, store) is not store:
                await store.aclose()  # another registration of the same config won
            return store_id
        finally:
            self._registering[store_id] -= 1
            if not self._registering[store_id]:
                del self._registering[store_id]

    def registered(self) -> set[str]:
        """The ids of every config kept (the default store's is not one)."""
        return set(self._configs)

    def config(self, store_id: str) -> StorageConfig | None:
        """The config behind a registered id (``None`` for the default or an unknown id)."""
        return self._configs.get(store_id)

    def resolve(self, store_id: str) -> ObjectStore:
        """The store for ``store_id``; ``StoreRefused`` for an id never registered."""
        if store_id == DEFAULT_STORE_ID:
            return self.default
        store = self._stores.get(store_id)
        if store is None:
            config = self._configs.get(store_id)
            if config is None:
                raise StoreRefused(f"no storage config registered as {store_id}")
            store = self._stores[store_id] = S3ObjectStore(config.to_s3(**self._tuning))
        return store

    async def forget(self, store_id: str, still_needed: Callable[[], bool] | None = None) -> None:
        """Drop a config nothing waits for any more (its keys leave the disk). Kept: one that a
        ``register`` is under way for, and one for which ``still_needed()`` (asked at the last
        moment, with nothing awaited until the config is gone) says so."""
        async with self._files:
            if store_id in self._registering or (still_needed is not None and still_needed()):
                return
            self._configs.pop(store_id, None)
            store = self._stores.pop(store_id, None)
            await asyncio.to_thread(remove_quietly, self.directory / f"{store_id}.json")
        if store is not None:
            await store.aclose()

    async def aclose(self) -> None:
        """Close every store's connections, the default's included."""
        stores, self._stores = list(self._stores.values()), {}
        for store in stores:
            await store.aclose()
        await self.default.aclose()
