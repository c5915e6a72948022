"""Apps of the channel API: ``reelhouse app create`` makes one, WHIP and tokens look them up."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from ingest.errors import CloseCode, ProtocolError
from ingest.tokens import TokenError, check_cname, check_uid, verify
from storage.meta import AppRow, MetaStore

from .webhooks import WebhookTarget


async def create_app_row(
    meta: MetaStore, *, token_required: bool = True, webhook_url: str = ""
) -> AppRow:
    """A new app with a random 32-hex appid and certificate (the vendor's format); with a
    webhook URL, a secret that signs its notifications."""
    if webhook_url:
        WebhookTarget(webhook_url, "check")  # ValueError for a URL that is not http(s)
    row = AppRow(
        appid=secrets.token_hex(16),
        certificate=secrets.token_hex(16),
        token_required=token_required,
        created_at=datetime.now(UTC),
        webhook_url=webhook_url,
        webhook_secret=secrets.token_hex(16) if webhook_url else "",
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

    async def admit(self, appid: str, cname: str, uid: str | None, token: str) -> str:
        """The uid a WebSocket publisher joins ``cname`` as, or ``ProtocolError`` saying why."""
        try:
            app = await self.get(appid)
            if app is None:
                raise TokenError(f"app {appid} not found")
            check_cname(cname)
            if uid is not None:
                check_uid(uid)
            if not app.token_required:
                return uid or f"u{secrets.randbelow(2**31)}"
            if not token:
                raise TokenError("this app needs a channel token in hello.token")
            grant = verify(token, app.certificate, appid=appid, cname=cname, uid=uid)
        except TokenError as exc:
            raise ProtocolError(CloseCode.UNAUTHENTICATED, str(exc)) from None
        return grant.uid
