"""The metadata store interface: sessions, their events, recorded files, API keys, tenants,
browser-extension recordings, the webhook outbox and cloud recording resources and sessions.

SQLite (``meta_sqlite.SqliteMetaStore``) is the embedded default; the interface is kept
narrow and SQL-neutral so a Postgres implementation can fill it later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from .recordings import RecordingPage, RecordingRow


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One screen-recording session as stored."""

    session_id: str
    customer_id: str
    profile_id: str
    platform_call_id: str
    agent_platform_id: str
    user_id: str
    state: str  # ingest.sessions.SessionState value
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None = None
    acked_seq: int = 0  # highest media sequence number made durable
    recorded_ms: int = 0  # media time recorded so far (paused time excluded)
    extra: dict[str, Any] = field(default_factory=dict)  # small JSON-able state


@dataclass(frozen=True, slots=True)
class SessionEventRow:
    """One processed session event and whether the recording app acked it."""

    event_id: int
    session_id: str
    event_type: str
    created_at: datetime
    acked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class FileRow:
    """One file a recording produced: a segment, a playlist, an MP4, a snapshot."""

    session_id: str
    key: str  # object-store key
    kind: str  # "segment" | "playlist" | "mp4" | "snapshot"
    size: int
    created_at: datetime
    duration_ms: int = 0
    seq: int = 0  # segment index within the session
    discontinuity: bool = False
    program_date_time: datetime | None = None
    uploaded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    """A stored API key (only its hash is kept)."""

    key_hash: str
    name: str
    tenant_id: str
    user_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AppRow:
    """An app of the channel API: its id, the certificate that signs its tokens."""

    appid: str
    certificate: str
    token_required: bool
    created_at: datetime
    webhook_url: str = ""  # cloud recording notifications go here when set
    webhook_secret: str = ""  # signs them (HMAC-SHA256)


@dataclass(frozen=True, slots=True)
class CustomerRow:
    """A customer of the cloud recording API (Basic Auth); only the secret's hash is kept."""

    customer_id: str
    secret_hash: str
    created_at: datetime


class NoticeState(StrEnum):
    """Where an outbox notice stands (a delivered one is deleted, so it has no state)."""

    PENDING = "pending"
    GIVEN_UP = "given_up"


@dataclass(frozen=True, slots=True)
class NoticeRow:
    """One webhook notice in the outbox: what to send, where, and how far it got."""

    notice_id: str
    sid: str
    sequence: int  # counted per sid from 0; never reused
    event_type: int
    url: str
    secret: str = field(repr=False)  # signs the notice; kept out of reprs and logs
    payload: bytes = field(repr=False)  # the JSON ``payload`` object as signed, byte for byte
    created_at: datetime
    attempts: int = 0
    state: NoticeState = NoticeState.PENDING
    reason: str = ""  # the last failure, or why it was given up
    finished_at: datetime | None = None  # when it was given up


@dataclass(slots=True)
class NoticeWrites:
    """A batch of outbox changes, written in one transaction by ``write_notices``."""

    added: list[NoticeRow] = field(default_factory=list)  # pending or (dropped) given up
    attempts: dict[str, tuple[int, str]] = field(default_factory=dict)  # id → (tries, error)
    delivered: list[str] = field(default_factory=list)  # ids the receiver accepted
    # id → (tries, why, when)
    given_up: dict[str, tuple[int, str, datetime]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.attempts or self.delivered or self.given_up)


class NoticeStore(Protocol):
    """The webhook outbox part of the metadata store (all the notifier needs)."""

    async def write_notices(self, writes: NoticeWrites) -> None:
        """In one transaction: insert ``added`` (and advance each sid's last sequence), record
        attempts, delete delivered notices, mark given-up ones; ids not stored are ignored."""
        ...

    async def list_notices(self, state: NoticeState, sid: str | None = None) -> list[NoticeRow]:
        """Notices in ``state`` (only ``sid``'s when given), oldest first, then by sequence."""
        ...

    async def last_notice_sequence(self, sid: str) -> int | None:
        """The highest sequence ever given to ``sid``'s notices, or ``None``."""
        ...

    async def prune_notices(self, given_up_before: datetime, sequences_before: datetime) -> int:
        """Forget notices given up before the first time and sequence counters untouched since
        the second; the number of rows removed."""
        ...


@dataclass(frozen=True, slots=True)
class CloudResourceRow:
    """A cloud recording resource (``acquire``) and the one session it started."""

    resource_id: str
    node: str
    appid: str
    cname: str
    uid: str
    acquired_at: datetime
    request: dict[str, Any] = field(default_factory=dict)  # the acquire body as sent
    sid: str | None = None


@dataclass(frozen=True, slots=True)
class CloudSessionRow:
    """A cloud recording session as stored: enough to answer query and to resume it."""

    sid: str
    resource_id: str
    node: str
    appid: str
    cname: str
    uid: str
    mode: str
    status: int
    store_id: str
    started_at: datetime
    updated_at: datetime
    ended_at: datetime | None = None
    exit_reason: str = ""
    uploading_status: str = ""
    state: dict[str, Any] = field(default_factory=dict)  # JSON: config, options, file entries


@dataclass(frozen=True, slots=True)
class CloudSegmentRow:
    """One segment of a cloud recording's playlist, handed to the uploader."""

    sid: str
    playlist: str  # the playlist's file name
    seq: int  # place in the playlist, from 0 over every run of the session
    uri: str
    duration_s: float
    program_date_time: datetime
    discontinuity: bool = False


@dataclass(slots=True)
class CloudWrites:
    """A batch of cloud recording changes, written in one transaction by ``write_cloud``."""

    resources: dict[str, CloudResourceRow] = field(default_factory=dict)  # id → row (upsert)
    sessions: dict[str, CloudSessionRow] = field(default_factory=dict)  # sid → row (upsert)
    segments: list[CloudSegmentRow] = field(default_factory=list)  # inserted (or replaced)
    forget_resources: list[str] = field(default_factory=list)  # resource ids removed
    forget_sessions: list[str] = field(default_factory=list)  # sids removed with segments

    def __bool__(self) -> bool:
        return bool(
            self.resources
            or self.sessions
            or self.segments
            or self.forget_resources
            or self.forget_sessions
        )


class CloudRecordingStore(Protocol):
    """The cloud recording part of the metadata store (all the cloud recording service needs)."""

    async def write_cloud(self, writes: CloudWrites) -> None:
        """In one transaction: upsert resources then sessions, insert segments, then remove
        what is forgotten (a forgotten session takes its segments along)."""
        ...

    async def list_cloud_resources(
        self, node: str, acquired_since: datetime
    ) -> list[CloudResourceRow]:
        """``node``'s resources that started a session, or were acquired since the time."""
        ...

    async def list_cloud_sessions(self, node: str) -> list[CloudSessionRow]:
        """``node``'s sessions, oldest first."""
        ...

    async def list_cloud_segments(self, sid: str) -> list[CloudSegmentRow]:
        """A session's segments by playlist, then in order."""
        ...

    async def prune_cloud(
        self, node: str, resources_before: datetime, ended_before: datetime
    ) -> int:
        """Forget ``node``'s unused resources acquired before the first time and its sessions
        ended before the second (with their resources and segments); the rows removed."""
        ...


class MetaStore(NoticeStore, CloudRecordingStore, Protocol):
    """Durable metadata. Every method is a single transaction; rows come back as dataclasses."""

    async def open(self) -> None:
        """Connect and apply pending migrations."""
        ...

    async def aclose(self) -> None:
        """Close; calling it twice is harmless."""
        ...

    async def schema_version(self) -> int:
        """The migration number the database is at."""
        ...

    async def make_durable(self) -> None:
        """Every transaction committed so far survives a power cut from now on (a committed
        one always survives a crash of the process; a store may flush them to the disk in
        batches until asked)."""
        ...

    # sessions
    async def create_session(self, row: SessionRow) -> None:
        """Insert a new session; ``MetaConflict`` if the id exists."""
        ...

    async def get_session(self, session_id: str) -> SessionRow | None:
        """The session, or ``None``."""
        ...

    async def update_session(self, session_id: str, **changes: Any) -> SessionRow:
        """Set the named columns (and ``updated_at``); ``KeyError`` when the session is unknown."""
        ...

    async def list_sessions(self, states: tuple[str, ...] | None = None) -> list[SessionRow]:
        """Sessions, optionally only those in ``states``, oldest first."""
        ...

    # events
    async def add_event(self, session_id: str, event_type: str, at: datetime) -> SessionEventRow:
        """Record a processed event."""
        ...

    async def ack_event(self, event_id: int, at: datetime) -> None:
        """Mark an event acked by the recording app."""
        ...

    async def list_events(self, session_id: str) -> list[SessionEventRow]:
        """A session's events in order."""
        ...

    # files
    async def add_file(self, row: FileRow) -> None:
        """Record a produced file (replaces a row with the same key)."""
        ...

    async def mark_uploaded(self, key: str, at: datetime) -> None:
        """Record that the object store confirmed ``key``."""
        ...

    async def list_files(self, session_id: str, kind: str | None = None) -> list[FileRow]:
        """A session's files ordered by kind then seq."""
        ...

    # API keys
    async def add_api_key(self, row: ApiKeyRow) -> None:
        """Store a key hash."""
        ...

    async def find_api_key(self, key_hash: str) -> ApiKeyRow | None:
        """The key with this hash, or ``None``."""
        ...

    async def add_app(self, row: AppRow) -> None:
        """Store an app; ``MetaConflict`` when the appid is taken."""
        ...

    async def get_app(self, appid: str) -> AppRow | None:
        """The app, or ``None``."""
        ...

    async def add_customer(self, row: CustomerRow) -> None:
        """Store a customer; ``MetaConflict`` when the id is taken."""
        ...

    async def get_customer(self, customer_id: str) -> CustomerRow | None:
        """The customer, or ``None``."""
        ...

    # tenants and users
    async def ensure_tenant(self, ref: str) -> str:
        """The id of the tenant ``ref`` names (a UUID, or a name), created when missing."""
        ...

    async def ensure_user(self, tenant_id: str, ref: str | None) -> str:
        """The id of the tenant's user ``ref`` names (UUID, name, or ``None``: a new user)."""
        ...

    # browser-extension recordings
    def new_recording_id(self) -> str:
        """A fresh recording id, greater than every one made before it."""
        ...

    async def create_recording(self, row: RecordingRow) -> None:
        """Insert a recording; ``MetaConflict`` if the id exists."""
        ...

    async def get_recording(self, recording_id: str, tenant_id: str | None) -> RecordingRow | None:
        """The recording (only the tenant's, when ``tenant_id`` is given), or ``None``."""
        ...

    async def list_recordings(
        self,
        tenant_id: str,
        limit: int,
        *,
        before: str | None = None,
        project_id: str | None = None,
        status: str | None = None,
    ) -> RecordingPage:
        """A tenant's recordings newest first; with ``before``, only ids below it."""
        ...

    async def update_recording(
        self, recording_id: str, *, only_from: tuple[str, ...] = (), **changes: Any
    ) -> RecordingRow | None:
        """Set columns; ``None`` when missing or (with ``only_from``) in another status."""
        ...

    async def delete_recording(self, recording_id: str, tenant_id: str) -> bool:
        """Remove the tenant's recording row; whether there was one."""
        ...

    async def recordings_with_status(self, status: str) -> list[RecordingRow]:
        """Every recording in ``status``, oldest first."""
        ...
