"""Apps of the channel API: ``reelhouse app create`` makes one, WHIP and tokens look them up."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from storage.meta import AppRow, MetaStore


async def create_app_row(meta: MetaStore, *, token_required: bool = True) -> AppRow:
    """A new app with a random 32-hex appid and certificate (the vendor's format)."""
    row = AppRow(
        appid=secrets.token_hex(16),
        certificate=secrets.token_hex(16),
        token_required=token_required,
        created_at=datetime.now(UTC),
    )
    await meta.add_app(row)
    return row


class AppDirectory:
    """Looks apps up in the metadata store (one small indexed read per join)."""

    def __init__(self, meta: MetaStore) -> None:
        self._meta = meta

    async def get(self, appid: str) -> AppRow | None:
        """The app, or ``None`` for an unknown (or malformed) appid."""
        if not 1 <= len(appid) <= 64:
            return None
        return await self._meta.get_app(appid)
