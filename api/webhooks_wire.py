"""What a cloud recording notice is on the wire, for the sender and for receivers: its event
types and message names, the drop tiers (``webhooks``' module doc), the app's target, and the
HMAC signature header (``verify_signature`` is what a receiver checks)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from enum import IntEnum

from yarl import URL

PRODUCT_ID_CLOUD_RECORDING = 3  # ``productId`` of that API's cloud recording notices
SERVICE_TYPE_RECORDING = 0  # ``payload.serviceType``: 0 is the recording service
SIGNATURE_HEADER = "X-Reelhouse-Signature"
NOTICE_ID_HEADER = "X-Reelhouse-Notice-Id"
SIGNATURE_VERSION = "v1"  # the scheme prefix, so a receiver can accept a new one alongside


class NotificationEvent(IntEnum):
    """The ``eventType`` values of that API's cloud recording notices that reelhouse sends.

    ``details`` is what that API puts there; its ``msgName`` is filled in when left out.
    """

    ERROR = 1  # {module, errorLevel, errorCode, stat, errorMsg}
    WARNING = 2  # {module, warnCode}
    SESSION_EXIT = 11  # {exitStatus}
    UPLOADER_STARTED = 30  # {status}
    UPLOADED = 31  # {status, fileList: [{fileName, trackType, uid, mixedAllUser, ...}]}
    RECORDER_STARTED = 40  # {status}
    RECORDER_LEAVE = 41  # {leaveCode}
    RECORDER_SLICE_START = 42  # {startUtcMs, discontinueUtcMs, mixedAllUser, streamUid, ...}
    RECORDER_SNAPSHOT_FILE = 45  # {fileName}


MSG_NAMES: dict[NotificationEvent, str] = {
    NotificationEvent.ERROR: "cloud_recording_error",
    NotificationEvent.WARNING: "cloud_recording_warning",
    NotificationEvent.SESSION_EXIT: "session_exit",
    NotificationEvent.UPLOADER_STARTED: "uploader_started",
    NotificationEvent.UPLOADED: "uploaded",
    NotificationEvent.RECORDER_STARTED: "recorder_started",
    NotificationEvent.RECORDER_LEAVE: "recorder_leave",
    NotificationEvent.RECORDER_SLICE_START: "recorder_slice_start",
    NotificationEvent.RECORDER_SNAPSHOT_FILE: "recorder_snapshot_file",
}

# the drop tier of each event (see the module docstring): lower is dropped first
DROP_TIERS: dict[NotificationEvent, int] = {
    NotificationEvent.WARNING: 0,
    NotificationEvent.RECORDER_SLICE_START: 0,
    NotificationEvent.RECORDER_SNAPSHOT_FILE: 0,
    NotificationEvent.UPLOADER_STARTED: 0,
    NotificationEvent.RECORDER_STARTED: 1,
    NotificationEvent.RECORDER_LEAVE: 1,
    NotificationEvent.ERROR: 1,
    NotificationEvent.UPLOADED: 2,
    NotificationEvent.SESSION_EXIT: 2,
}
_TIER_COUNT = 3


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """One app's callback: where notices go and the secret they are signed with."""

    url: str
    secret: str = field(repr=False)  # kept out of logs and reprs

    def __post_init__(self) -> None:
        # checked here, when the app is configured, so a bad URL is an error the app's owner
        # sees rather than a notice dropped later
        try:
            parsed = URL(self.url)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"webhook url is not a URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("webhook url must be an absolute http:// or https:// URL")
        if not self.secret:
            raise ValueError("webhook secret must not be empty")

    @property
    def host(self) -> str:
        """The URL's host, what logs show (a path or query may hold the app's own token)."""
        return URL(self.url).host or ""


def sign(secret: str, body: bytes) -> str:
    """The signature header value of ``body``: ``v1=<hex HMAC-SHA256(secret, body)>``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` signs ``body`` with ``secret``; for receivers.

    The header may list several comma-separated ``v1=`` values (a sender rotating its secret
    signs with both); one match is enough. Compared in constant time.
    """
    if not header:
        return False
    expected = sign(secret, body).encode()
    matched = False
    for part in header.split(","):
        candidate = part.strip().encode("ascii", "replace")
        # no early exit: how long this takes must not say which entry matched
        matched |= hmac.compare_digest(candidate, expected)
    return matched
