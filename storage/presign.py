"""HMAC-signed URLs that grant one method on one object key until an expiry time."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote

MIN_SECRET_BYTES = 16  # shorter secrets make signatures guessable
MAX_EXPIRY_S = 7 * 24 * 3600  # the same ceiling S3 puts on presigned URLs


class UrlSigner:
    """Builds and checks ``base_url + path_prefix + key?method=..&expires=..&signature=..`` URLs."""

    def __init__(self, secret: bytes, base_url: str, path_prefix: str = "/v1/objects/") -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"signing secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self.base_url = base_url.rstrip("/")
        self.path_prefix = path_prefix

    def _digest(self, key: str, method: str, expires: int) -> str:
        # newline-separated fields: none of them can contain a newline that shifts the others
        message = f"{method.upper()}\n{expires}\n{key}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, key: str, method: str, expires_s: int, now: float | None = None) -> str:
        """A URL granting ``method`` on ``key`` for ``expires_s`` s from ``now`` (unix time)."""
        if not 0 < expires_s <= MAX_EXPIRY_S:
            raise ValueError(f"expires_s must be in 1..{MAX_EXPIRY_S}")
        if "\n" in key:
            raise ValueError("key must not contain a newline")
        expires = int(time.time() if now is None else now) + expires_s
        method = method.upper()
        signature = self._digest(key, method, expires)
        return (
            f"{self.base_url}{self.path_prefix}{quote(key, safe='/')}"
            f"?method={method}&expires={expires}&signature={signature}"
        )

    def verify(
        self, key: str, method: str, expires: int, signature: str, now: float | None = None
    ) -> bool:
        """True when ``signature`` was made by this signer for these values and has not expired."""
        current = time.time() if now is None else now
        if expires < current or "\n" in key:
            return False
        expected = self._digest(key, method, expires)
        return hmac.compare_digest(expected.encode(), signature.lower().encode("ascii", "replace"))
