"""Channel tokens: minted, verified, and every refusal naming its reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ingest.tokens import (
    Role,
    TokenError,
    _b64,
    _sign,
    check_cname,
    check_uid,
    mint,
    read_unverified,
    verify,
)

CERT = "0123456789abcdef0123456789abcdef"
NOW = 1_800_000_000.0


def test_a_minted_token_verifies() -> None:
    token = mint(CERT, "app1", "room 1", "527841", ttl_s=600, now=NOW)
    grant = verify(token, CERT, appid="app1", cname="room 1", uid="527841", now=NOW + 10)
    assert (grant.appid, grant.cname, grant.uid, grant.role) == (
        "app1",
        "room 1",
        "527841",
        Role.PUBLISHER,
    )
    assert grant.expires_at == int(NOW) + 600
    assert verify(token, CERT, appid="app1", cname="room 1", now=NOW).uid == "527841"  # any uid
    sub = mint(CERT, "app1", "room 1", "rec", Role.SUBSCRIBER, now=NOW)
    assert verify(sub, CERT, appid="app1", cname="room 1", role=Role.SUBSCRIBER, now=NOW)
    assert read_unverified(token)["app"] == "app1"


@pytest.mark.parametrize(
    ("token_args", "check", "reason"),
    [
        ({}, {"now": NOW + 601}, "token expired 1 s ago"),
        ({"now": NOW + 3600}, {}, "issued in the future"),
        ({}, {"appid": "app2"}, "for app 'app1', not 'app2'"),
        ({}, {"cname": "room 2"}, "for channel 'room 1', not 'room 2'"),
        ({}, {"uid": "999"}, "for uid '527841', not '999'"),
        ({"role": Role.SUBSCRIBER}, {}, "does not allow publishing"),
        ({"cert": "another-certificate-of-another-app"}, {}, "signature is not valid"),
    ],
)
def test_refusals_say_why(token_args: dict[str, Any], check: dict[str, Any], reason: str) -> None:
    cert = token_args.pop("cert", CERT)
    token = mint(cert, "app1", "room 1", "527841", ttl_s=600, **{"now": NOW, **token_args})
    kwargs = {"appid": "app1", "cname": "room 1", "uid": "527841", "now": NOW, **check}
    with pytest.raises(TokenError, match=reason):
        verify(token, CERT, **kwargs)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "malformed token"),
        ("rh1.abc", "malformed token"),
        ("jwt.a.b", "malformed token"),
        ("rh1.!!!.sig", "not base64url JSON"),
        ("rh1.W10.sig", "not an object"),
        ("rh1." + "a" * 3000 + ".s", "too long"),
    ],
)
def test_malformed_tokens(token: str, reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        verify(token, CERT, appid="app1", cname="room 1", now=NOW)


def _signed(body: dict[str, object]) -> str:
    """A token signed by the app's own backend code (not ``mint``, which checks its input)."""
    payload = _b64(json.dumps(body).encode())
    return f"rh1.{payload}.{_sign(CERT, payload)}"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"uid": "../../x"}, "uid"),  # (a uid names a recording's folder and files)
        ({"uid": ".."}, "uid"),
        ({"uid": ""}, "uid"),
        ({"ch": "a/b"}, "channel name"),
        ({"exp": 1e400}, "malformed token"),  # (JSON's infinity: int() overflows)
        ({"exp": NOW + 31 * 24 * 3600}, "lives longer than"),  # (mint's month, at most)
    ],
)
def test_a_backend_signed_token_is_checked_as_mint_checks(
    change: dict[str, object], reason: str
) -> None:
    body = {"app": "app1", "ch": "room 1", "uid": "alice", "role": "publisher",
            "iat": NOW, "exp": NOW + 60, **change}  # fmt: skip
    with pytest.raises(TokenError, match=reason):
        verify(_signed(body), CERT, appid="app1", cname=str(body["ch"]), now=NOW)


def test_a_signature_that_is_not_ascii_is_refused() -> None:
    """Not a TypeError from compare_digest (a 500, or a 1011 the client retries for ever)."""
    payload = mint(CERT, "app1", "room 1", "alice", now=NOW).split(".")[1]
    with pytest.raises(TokenError, match="signature is not valid"):
        verify(f"rh1.{payload}.\u00e9\u00e9", CERT, appid="app1", cname="room 1", now=NOW)


def test_tampered_payload_is_refused() -> None:
    token = mint(CERT, "app1", "room 1", "alice", now=NOW)
    _, payload, sig = token.split(".")
    other = mint(CERT, "app1", "room 1", "mallory", now=NOW).split(".")[1]
    with pytest.raises(TokenError, match="signature is not valid"):
        verify(f"rh1.{other}.{sig}", CERT, appid="app1", cname="room 1", now=NOW)
    assert payload != other


def test_names_and_ttl_are_checked() -> None:
    assert check_uid("user@example.com") == "user@example.com"
    for bad in ("", "a b", "x" * 256, "é", ".", ".."):
        with pytest.raises(TokenError, match="uid"):
            check_uid(bad)
    assert check_cname("Room-1 (main)") == "Room-1 (main)"
    for bad in ("", "x" * 65, "a/b"):
        with pytest.raises(TokenError, match="channel name"):
            check_cname(bad)
    with pytest.raises(TokenError, match="ttl"):
        mint(CERT, "app1", "room", "u", ttl_s=0)
