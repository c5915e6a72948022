"""Server-wide storage settings: where recordings go when a request names no bucket of its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .presign import MAX_EXPIRY_S
from .s3 import S3Config

BACKENDS = ("local", "s3")


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """``[storage]``: ``backend = "local"`` (``<data_dir>/objects``) or ``"s3"`` (a bucket)."""

    backend: str = "local"
    bucket: str = ""
    region: str = "us-east-1"
    endpoint_url: str = ""  # empty: AWS's own endpoint for ``region``
    public_endpoint_url: str = ""  # the host presigned URLs name, when clients reach another
    access_key: str = ""  # empty: botocore's chain (AWS_* env, instance role, ...)
    secret_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)
    addressing_style: str = "auto"  # "path" for most self-hosted stores
    prefix: str = ""  # "dir/" put before every key
    sse: str = ""  # "AES256" or "aws:kms"
    check_on_start: bool = True  # a wrong bucket or key stops the start, an outage does not
    # a request's storageConfig may name an endpoint on a loopback, private or link-local
    # address (your own S3-compatible store on the LAN); off: only public addresses
    private_endpoints: bool = False
    presign_expiry_s: int = 3600  # every presigned link the APIs hand out (S3's or ours)
    multipart_threshold_bytes: int = 16 * 1024**2
    multipart_part_bytes: int = 8 * 1024**2
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"storage.backend must be one of {BACKENDS}, not {self.backend!r}")
        if not 1 <= self.presign_expiry_s <= MAX_EXPIRY_S:
            raise ValueError(
                f"storage.presign_expiry_s must be 1..{MAX_EXPIRY_S} (S3's ceiling, 7 days), "
                f"not {self.presign_expiry_s}"
            )

    def tuning(self) -> dict[str, Any]:
        """The client settings every S3 store of this server uses, user buckets included."""
        return {
            "multipart_threshold_bytes": self.multipart_threshold_bytes,
            "multipart_part_bytes": self.multipart_part_bytes,
            "connect_timeout_s": self.connect_timeout_s,
            "read_timeout_s": self.read_timeout_s,
        }

    def s3_config(self) -> S3Config:
        """The default bucket's client settings (``ValueError`` when they do not hold)."""
        if not self.bucket:  # checked here, not at load: the bucket may come from a later layer
            raise ValueError("storage.bucket is required when storage.backend is 's3'")
        return S3Config(
            bucket=self.bucket,
            region=self.region,
            endpoint_url=self.endpoint_url or None,
            public_endpoint_url=self.public_endpoint_url or None,
            access_key=self.access_key,
            secret_key=self.secret_key,
            session_token=self.session_token or None,
            addressing_style=self.addressing_style,
            prefix=self.prefix,
            sse=self.sse or None,
            **self.tuning(),
        )
