"""Channel tokens: a publisher (or subscriber) proves it may join a channel of an app.

A token is ``rh1.<payload>.<signature>``: the payload is base64url JSON naming the app, the
channel, the uid, the role and the validity window; the signature is HMAC-SHA256 of the
payload's text under the app's certificate. It is minted by ``reelhouse token`` or by the
application's own backend, which holds the certificate; the server checks it on every join.
Every refusal says which rule failed (the API answers 401 with that reason).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from enum import StrEnum

VERSION = "rh1"
MAX_TTL_S = 30 * 24 * 3600  # a month: long recordings need long tokens, forever is too long
DEFAULT_TTL_S = 24 * 3600
CLOCK_SKEW_S = 60  # tokens minted on a machine whose clock runs a little ahead still work
MAX_TOKEN_CHARS = 2048
UID_RE = re.compile(r"[A-Za-z0-9_.:@+-]{1,255}")
CNAME_RE = re.compile(r"[A-Za-z0-9!#$%&()+\-:;<=.>?@\[\]^_{|}~, ]{1,64}")  # the vendor's set


class Role(StrEnum):
    """What the token allows: publishing tracks, or only receiving them (recorders)."""

    PUBLISHER = "publisher"
    SUBSCRIBER = "subscriber"


class TokenError(ValueError):
    """The token does not admit this join; the message is the reason, safe to show."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token grants."""

    appid: str
    cname: str
    uid: str
    role: Role
    issued_at: int
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_uid(uid: str) -> str:
    """``uid`` when it is a valid user id (1-255 of ``A-Za-z0-9_.:@+-``), else ``TokenError``."""
    if not UID_RE.fullmatch(uid) or uid in (".", ".."):  # (a uid names files of its own)
        raise TokenError(
            f"uid {uid[:64]!r} is not valid: 1-255 characters of A-Za-z0-9_.:@+-, not . or .."
        )
    return uid


def check_cname(cname: str) -> str:
    """``cname`` when it is a valid channel name (1-64 characters of the vendor's set)."""
    if not CNAME_RE.fullmatch(cname):
        raise TokenError(f"channel name {cname[:80]!r} is not valid: 1-64 characters")
    return cname


def _sign(certificate: str, payload: str) -> str:
    digest = hmac.new(certificate.encode(), payload.encode("ascii"), hashlib.sha256).digest()
    return _b64(digest)


def mint(
    certificate: str,
    appid: str,
    cname: str,
    uid: str,
    role: Role = Role.PUBLISHER,
    ttl_s: int = DEFAULT_TTL_S,
    now: float | None = None,
) -> str:
    """A token for ``uid`` in ``cname`` of ``appid``, valid for ``ttl_s`` seconds."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise TokenError(f"ttl must be 1..{MAX_TTL_S} seconds")
    issued = int(time.time() if now is None else now)
    body = {
        "app": appid,
        "ch": check_cname(cname),
        "uid": check_uid(uid),
        "role": Role(role).value,
        "iat": issued,
        "exp": issued + ttl_s,
    }
    payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
    return f"{VERSION}.{payload}.{_sign(certificate, payload)}"


def read_unverified(token: str) -> dict[str, object]:
    """The payload of a well-formed token, signature not checked (to find its app)."""
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError("token too long")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise TokenError(f"malformed token: expected {VERSION}.<payload>.<signature>")
    try:
        body = json.loads(_unb64(parts[1]))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise TokenError("malformed token: the payload is not base64url JSON") from None
    if not isinstance(body, dict):
        raise TokenError("malformed token: the payload is not an object")
    return body


def verify(
    token: str,
    certificate: str,
    *,
    appid: str,
    cname: str,
    uid: str | None = None,
    role: Role = Role.PUBLISHER,
    now: float | None = None,
) -> Grant:
    """The grant of ``token`` for joining ``cname`` of ``appid``, or ``TokenError`` saying why.

    ``uid`` None accepts the token's own uid. A publisher token also admits a subscriber.
    """
    body = read_unverified(token)
    payload, signature = token.split(".")[1:]
    given = signature.encode("utf-8", "replace")  # (compare_digest takes no non-ASCII str)
    if not hmac.compare_digest(_sign(certificate, payload).encode(), given):
        raise TokenError("token signature is not valid for this app (forged or another app's)")
    try:
        grant = Grant(
            appid=str(body["app"]),
            cname=str(body["ch"]),
            uid=str(body["uid"]),
            role=Role(str(body["role"])),
            issued_at=int(body["iat"]),  # type: ignore[call-overload]
            expires_at=int(body["exp"]),  # type: ignore[call-overload]
        )
    except (KeyError, ValueError, TypeError, OverflowError):
        raise TokenError("malformed token: fields missing or of the wrong type") from None
    check_uid(grant.uid)  # (an app's backend may mint with code of its own: checked here too)
    check_cname(grant.cname)
    current = time.time() if now is None else now
    if grant.expires_at <= current:
        raise TokenError(f"token expired {int(current - grant.expires_at)} s ago")
    if grant.expires_at - grant.issued_at > MAX_TTL_S:  # (mint refuses these: a backend's too)
        raise TokenError(f"token lives longer than {MAX_TTL_S} s (a leaked one would never die)")
    if grant.issued_at > current + CLOCK_SKEW_S:
        raise TokenError("token issued in the future (check the minting clock)")
    if grant.appid != appid:
        raise TokenError(f"token is for app {grant.appid!r}, not {appid!r}")
    if grant.cname != cname:
        raise TokenError(f"token is for channel {grant.cname!r}, not {cname!r}")
    if uid is not None and grant.uid != uid:
        raise TokenError(f"token is for uid {grant.uid!r}, not {uid!r}")
    if role is Role.PUBLISHER and grant.role is not Role.PUBLISHER:
        raise TokenError("token does not allow publishing (role subscriber)")
    return grant
