"""The cloud recording API's ``storageConfig``, field for field, validated into an S3 config.

Every vendor is reached through its S3-compatible API. Amazon S3 (1), Alibaba Cloud OSS (2),
Tencent COS (3, the regions whose numbers are known here) and Google Cloud Storage (6, one
endpoint for all regions) have their endpoint derived from ``region``; S3-compatible storage
(11) names its endpoint in ``extensionParams.endpoint``. Microsoft Azure (5) has no S3 API;
Huawei OBS (7) and Baidu BOS (8) have one but their region numbers are not known here: those
answer a clear error that says what to send instead.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from .errors import StorageConfigError
from .s3 import S3Config

VENDOR_NAMES = {
    1: "Amazon S3",
    2: "Alibaba Cloud",
    3: "Tencent Cloud",
    5: "Microsoft Azure",
    6: "Google Cloud",
    7: "Huawei Cloud",
    8: "Baidu IntelligentCloud",
    11: "S3-compatible storage",
}
AMAZON_REGIONS = {
    0: "us-east-1",
    1: "us-east-2",
    2: "us-west-1",
    3: "us-west-2",
    4: "eu-west-1",
    5: "eu-west-2",
    6: "eu-west-3",
    7: "eu-central-1",
    8: "ap-southeast-1",
    9: "ap-southeast-2",
    10: "ap-northeast-1",
    11: "ap-northeast-2",
    12: "sa-east-1",
    13: "ca-central-1",
    14: "ap-south-1",
    15: "cn-north-1",
    16: "cn-northwest-1",
    18: "af-south-1",
    19: "ap-east-1",
    20: "ap-northeast-3",
    21: "eu-north-1",
    22: "me-south-1",
    24: "ap-southeast-3",
    25: "eu-south-1",
}
ALIBABA_REGIONS = {
    0: "cn-hangzhou",
    1: "cn-shanghai",
    2: "cn-qingdao",
    3: "cn-beijing",
    4: "cn-zhangjiakou",
    5: "cn-huhehaote",
    6: "cn-shenzhen",
    7: "cn-hongkong",
    8: "us-west-1",
    9: "us-east-1",
    10: "ap-southeast-1",
    11: "ap-southeast-2",
    12: "ap-southeast-3",
    13: "ap-southeast-5",
    14: "ap-northeast-1",
    15: "ap-south-1",
    16: "eu-central-1",
    17: "eu-west-1",
    19: "ap-southeast-6",
    20: "cn-heyuan",
    21: "cn-guangzhou",
    22: "cn-chengdu",
    23: "cn-nanjing",
    24: "cn-fuzhou",
    25: "cn-wulanchabu",
}  # 18, 26 and 27 are left out: their region ids could not be confirmed
TENCENT_REGIONS = {
    0: "ap-beijing-1",
    1: "ap-beijing",
    2: "ap-shanghai",
    3: "ap-guangzhou",
    4: "ap-chengdu",
    5: "ap-chongqing",
}
STS_VENDORS = frozenset({1, 2, 3})  # the seed: stsToken only for these
SSE_VENDORS = frozenset({1, 11})  # "Applicable to Amazon S3 only" (and S3-compatible stores)
TAG_VENDORS = frozenset({1, 2, 11})  # "Applicable to Alibaba Cloud and Amazon S3 only"
SSE_MODES = {"kms": "aws:kms", "aes256": "AES256"}
MAX_PREFIX_CHARS = 128  # the whole prefix with its slashes
PREFIX_PART_RE = re.compile(r"[A-Za-z0-9]+")
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
MAX_TAGS = 10  # S3's ceiling per object


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """A validated ``storageConfig``; ``to_json`` gives back the seed's field names."""

    vendor: int
    region: int
    bucket: str
    access_key: str
    secret_key: str
    sts_token: str | None = None
    sts_expiration: int | None = None
    file_name_prefix: tuple[str, ...] = ()
    sse: str | None = None
    tag: str | None = None
    endpoint: str | None = None

    @property
    def prefix(self) -> str:
        """``["a", "b"]`` → ``"a/b/"``: what goes before every file name."""
        return "".join(part + "/" for part in self.file_name_prefix)

    def to_json(self) -> dict[str, Any]:
        """The object as the API takes it (secrets included: for the server's own files only)."""
        out: dict[str, Any] = {
            "vendor": self.vendor,
            "region": self.region,
            "bucket": self.bucket,
            "accessKey": self.access_key,
            "secretKey": self.secret_key,
        }
        if self.sts_token is not None:
            out["stsToken"] = self.sts_token
        if self.sts_expiration is not None:
            out["stsExpiration"] = self.sts_expiration
        if self.file_name_prefix:
            out["fileNamePrefix"] = list(self.file_name_prefix)
        ext = {
            k: v
            for k, v in (("sse", self.sse), ("tag", self.tag), ("endpoint", self.endpoint))
            if v is not None
        }
        if ext:
            out["extensionParams"] = ext
        return out

    def to_s3(self, **tuning: Any) -> S3Config:
        """The S3 client settings that reach this bucket; ``tuning`` sets timeouts and sizes."""
        region, endpoint, style = _endpoint(self)
        return S3Config(
            bucket=self.bucket,
            region=region,
            endpoint_url=endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            session_token=self.sts_token,
            session_expiration=self.sts_expiration,
            addressing_style=style,
            prefix=self.prefix,
            sse=SSE_MODES[self.sse] if self.sse else None,
            tagging=_tagging(self.tag) if self.tag else None,
            **tuning,
        )


def _endpoint(cfg: StorageConfig) -> tuple[str, str | None, str]:
    """(signing region, endpoint URL or None for AWS's own, addressing style)."""
    if cfg.vendor == 1:
        return AMAZON_REGIONS[cfg.region], None, "auto"
    if cfg.vendor == 2:  # OSS takes virtual-hosted requests only
        region = ALIBABA_REGIONS[cfg.region]
        return region, f"https://oss-{region}.aliyuncs.com", "virtual"
    if cfg.vendor == 3:
        region = TENCENT_REGIONS[cfg.region]
        return region, f"https://cos.{region}.myqcloud.com", "virtual"
    if cfg.vendor == 6:  # the XML API with HMAC keys: one endpoint, region "auto"
        return "auto", "https://storage.googleapis.com", "path"
    assert cfg.vendor == 11 and cfg.endpoint is not None  # parse_storage_config saw to it
    return "us-east-1", cfg.endpoint, "path"  # self-hosted stores rarely have wildcard DNS


def _tagging(tag: str) -> str:
    return urlencode(parse_qsl(tag, keep_blank_values=True))


def _field(obj: Mapping[str, Any], name: str, kind: type, required: bool) -> Any:
    value = obj.get(name)
    if value is None:
        if required:
            raise StorageConfigError(name, "is required")
        return None
    if kind is int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            # (JSON's 1e400 parses as an infinite float: int() of it would raise)
            or (isinstance(value, float) and not (math.isfinite(value) and value.is_integer()))
        ):
            raise StorageConfigError(name, f"must be an integer, got {value!r}")
        return int(value)
    if not isinstance(value, kind):
        raise StorageConfigError(name, f"must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _check_bucket(bucket: str) -> None:
    if not BUCKET_RE.fullmatch(bucket) or ".." in bucket or ".-" in bucket or "-." in bucket:
        raise StorageConfigError(
            "bucket",
            f"{bucket!r} is not a valid bucket name (3-63 characters: lowercase letters, "
            "digits, dots and hyphens, starting and ending with a letter or digit)",
        )
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        return
    raise StorageConfigError("bucket", f"{bucket!r} must not be formatted as an IP address")


def _check_prefix(parts: Any) -> tuple[str, ...]:
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        raise StorageConfigError("fileNamePrefix", "must be an array of strings")
    for part in parts:
        if not PREFIX_PART_RE.fullmatch(part):
            raise StorageConfigError(
                "fileNamePrefix",
                f"{part!r}: only letters a-z, A-Z and digits 0-9 are allowed, and no empty parts",
            )
    total = sum(len(p) + 1 for p in parts)
    if total > MAX_PREFIX_CHARS:
        raise StorageConfigError(
            "fileNamePrefix", f"the prefix is {total} characters with slashes; at most 128"
        )
    return tuple(parts)


def check_public_endpoint(url: str) -> None:
    """Refuse an endpoint whose host is, or resolves to, an address that is not public
    (loopback, private, link-local: the server's own network, its cloud's metadata service),
    with ``StorageConfigError``; blocking (DNS). A name that does not resolve is left to the
    bucket check. (Checked when the config is taken: a name that resolves elsewhere later is
    not caught.)"""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise StorageConfigError(
                "extensionParams.endpoint",
                f"{host} is {address}, not a public address (a server may allow such "
                "endpoints: [storage] private_endpoints)",
            )


def _check_endpoint(raw: str) -> str:
    """A domain name (``s3.example.com``) or URL; a bare name gets ``https://``."""
    url = raw.strip() if "://" in raw else "https://" + raw.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StorageConfigError("extensionParams.endpoint", f"{raw!r} is not a domain name or URL")
    if parts.query or parts.fragment or parts.path not in ("", "/"):
        raise StorageConfigError(
            "extensionParams.endpoint", "give the service's domain name only, without a path"
        )
    return f"{parts.scheme}://{parts.netloc}"


def _check_tag(tag: str) -> str:
    pairs = parse_qsl(tag, keep_blank_values=True)
    if not pairs or len(pairs) > MAX_TAGS:
        raise StorageConfigError("extensionParams.tag", f"1 to {MAX_TAGS} tags, as k1=v1&k2=v2")
    for key, value in pairs:
        if not key or len(key) > 128 or len(value) > 256:
            raise StorageConfigError(
                "extensionParams.tag", "each tag needs a key of 1-128 and a value of 0-256 chars"
            )
    return tag


def parse_storage_config(obj: Any, *, now: float | None = None) -> StorageConfig:
    """Validate the API's ``storageConfig`` object; ``StorageConfigError`` names the bad field.

    Unknown fields are ignored, as the vendor's API does, so newer clients keep working.
    """
    if not isinstance(obj, Mapping):
        raise StorageConfigError("", "must be an object")
    vendor = _field(obj, "vendor", int, True)
    region = _field(obj, "region", int, True)
    if vendor not in VENDOR_NAMES:
        raise StorageConfigError(
            "vendor", f"unknown vendor {vendor}; one of {sorted(VENDOR_NAMES)}"
        )
    name = VENDOR_NAMES[vendor]
    if vendor == 5:
        raise StorageConfigError(
            "vendor", "Microsoft Azure Blob Storage has no S3-compatible API; not supported"
        )
    if vendor in (7, 8):
        raise StorageConfigError(
            "vendor",
            f"{name}: its region numbers are not known to this server; use vendor 11 with "
            "extensionParams.endpoint set to the bucket region's S3-compatible endpoint",
        )
    tables = {1: AMAZON_REGIONS, 2: ALIBABA_REGIONS, 3: TENCENT_REGIONS}
    if vendor in tables and region not in tables[vendor]:
        raise StorageConfigError(
            "region", f"{region} is not a region number of {name}; one of {sorted(tables[vendor])}"
        )
    if region < 0:
        raise StorageConfigError("region", "must not be negative")
    bucket = _field(obj, "bucket", str, True)
    _check_bucket(bucket)
    access_key = _field(obj, "accessKey", str, True)
    secret_key = _field(obj, "secretKey", str, True)
    if not access_key or not secret_key:
        raise StorageConfigError("accessKey" if not access_key else "secretKey", "is empty")
    sts_token = _field(obj, "stsToken", str, False) or None
    sts_expiration = _field(obj, "stsExpiration", int, False)
    if sts_token is not None and vendor not in STS_VENDORS:
        raise StorageConfigError("stsToken", f"supported for vendors 1, 2 and 3 only, not {name}")
    if sts_expiration is not None:
        if sts_token is None:
            raise StorageConfigError("stsExpiration", "given without stsToken")
        if not 0 <= sts_expiration < 2**64:
            raise StorageConfigError("stsExpiration", "must be a Unix time in seconds")
        if sts_expiration <= (time.time() if now is None else now):
            raise StorageConfigError("stsExpiration", "the STS token has already expired")
    prefix = obj.get("fileNamePrefix")
    file_name_prefix = () if prefix is None else _check_prefix(prefix)
    ext = obj.get("extensionParams")
    sse = tag = endpoint = None
    if ext is not None:
        if not isinstance(ext, Mapping):
            raise StorageConfigError("extensionParams", "must be an object")
        sse = _field(ext, "sse", str, False) or None
        tag = _field(ext, "tag", str, False) or None
        endpoint = _field(ext, "endpoint", str, False) or None
    if sse is not None:
        if sse.lower() not in SSE_MODES:
            raise StorageConfigError("extensionParams.sse", f"{sse!r}: one of kms, aes256")
        if vendor not in SSE_VENDORS:
            raise StorageConfigError(
                "extensionParams.sse", f"applies to Amazon S3 only, not {name}"
            )
        sse = sse.lower()
    if tag is not None:
        if vendor not in TAG_VENDORS:
            raise StorageConfigError(
                "extensionParams.tag", f"applies to Amazon S3 and Alibaba Cloud only, not {name}"
            )
        _check_tag(tag)
    if vendor == 11:
        if endpoint is None:
            raise StorageConfigError("extensionParams.endpoint", "is required for vendor 11")
        endpoint = _check_endpoint(endpoint)
    elif endpoint is not None:
        raise StorageConfigError("extensionParams.endpoint", "is for vendor 11 only")
    return StorageConfig(
        vendor=vendor,
        region=region,
        bucket=bucket,
        access_key=access_key,
        secret_key=secret_key,
        sts_token=sts_token,
        sts_expiration=sts_expiration,
        file_name_prefix=file_name_prefix,
        sse=sse,
        tag=tag,
        endpoint=endpoint,
    )
