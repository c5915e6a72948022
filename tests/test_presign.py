"""The URL signer: signatures round-trip, expire, and bind key and method."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from storage.presign import UrlSigner

SECRET = b"0123456789abcdef0123456789abcdef"
NOW = 1_700_000_000.0


def _parts(url: str) -> tuple[str, dict[str, str]]:
    split = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(split.query).items()}
    return split.path, query


def test_sign_builds_url_and_verifies() -> None:
    signer = UrlSigner(SECRET, "http://127.0.0.1:8080/")
    url = signer.sign("rec/a b/seg 1.ts", "get", 60, now=NOW)
    assert url.startswith("http://127.0.0.1:8080/v1/objects/rec/a%20b/seg%201.ts?")
    path, q = _parts(url)
    assert unquote(path.removeprefix("/v1/objects/")) == "rec/a b/seg 1.ts"
    assert q["method"] == "GET"
    assert int(q["expires"]) == int(NOW) + 60
    assert len(q["signature"]) == 64
    assert signer.verify("rec/a b/seg 1.ts", "GET", int(q["expires"]), q["signature"], now=NOW)


def test_verify_rejects_expired_and_tampered() -> None:
    signer = UrlSigner(SECRET, "http://h")
    _, q = _parts(signer.sign("k.ts", "GET", 60, now=NOW))
    expires, sig = int(q["expires"]), q["signature"]
    assert signer.verify("k.ts", "GET", expires, sig, now=NOW + 60)
    assert not signer.verify("k.ts", "GET", expires, sig, now=NOW + 61)
    assert not signer.verify("k2.ts", "GET", expires, sig, now=NOW)
    assert not signer.verify("k.ts", "PUT", expires, sig, now=NOW)
    assert not signer.verify("k.ts", "GET", expires + 1, sig, now=NOW)
    assert not signer.verify("k.ts", "GET", expires, "0" * 64, now=NOW)
    assert not signer.verify("k.ts", "GET", expires, "not hex é", now=NOW)
    other = UrlSigner(b"another-secret-of-enough-length", "http://h")
    assert not other.verify("k.ts", "GET", expires, sig, now=NOW)


def test_custom_prefix_and_default_clock() -> None:
    signer = UrlSigner(SECRET, "https://x.example", path_prefix="/o/")
    path, q = _parts(signer.sign("a/b.mp4", "GET", 3600))
    assert path == "/o/a/b.mp4"
    assert signer.verify("a/b.mp4", "GET", int(q["expires"]), q["signature"])


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        UrlSigner(b"short", "http://h")
    signer = UrlSigner(SECRET, "http://h")
    with pytest.raises(ValueError):
        signer.sign("k", "GET", 0)
    with pytest.raises(ValueError):
        signer.sign("k", "GET", 8 * 24 * 3600)
