"""Customers of the cloud recording API: HTTP Basic Auth with a customer id and secret.

``reelhouse customer create`` makes a pair; only the secret's SHA-256 is stored, so a lost
secret cannot be read back, only replaced by a new customer.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from datetime import UTC, datetime

from storage.meta import CustomerRow, MetaStore

from .auth import hash_key


async def create_customer(meta: MetaStore) -> tuple[str, str]:
    """A new (customer id, customer secret) pair, stored."""
    customer_id = secrets.token_hex(16)
    secret = secrets.token_hex(16)
    await meta.add_customer(CustomerRow(customer_id, hash_key(secret), datetime.now(UTC)))
    return customer_id, secret


class CustomerAuth:
    """Checks ``Authorization: Basic base64(customer_id:customer_secret)``."""

    def __init__(self, meta: MetaStore) -> None:
        self._meta = meta

    async def check(self, header: str | None) -> str | None:
        """The customer id when the header names a known customer and its secret, else None."""
        if not header:
            return None
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            pair = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        customer_id, sep, secret = pair.partition(":")
        if not sep or not customer_id:
            return None
        row = await self._meta.get_customer(customer_id)
        if row is None or not hmac.compare_digest(row.secret_hash, hash_key(secret)):
            return None
        return customer_id
