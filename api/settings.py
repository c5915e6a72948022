"""Configuration: one frozen dataclass per component, loaded once from defaults, an optional
TOML file, ``REELHOUSE_*`` environment variables and command-line flags (later wins)."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ingest.config import IngestSettings, RecorderSettings
from ingest.webrtc import WebRtcSettings
from storage.settings import StorageSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_DATA_DIR = Path("data")
ENV_PREFIX = "REELHOUSE_"


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Where the server listens and how it shuts down."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    public_url: str = ""  # announced in URLs; derived from host/port when empty
    shutdown_timeout_s: float = 10.0
    # a connection must send a whole request's headers within this from connecting, and a
    # kept-alive one its next within this of the last answer (else it is closed): one that
    # trickles a byte a minute no longer holds its socket and memory for an hour (aiohttp's
    # default); WebSockets, taken over at once, are not concerned. nginx's default; behind a
    # load balancer, set it above the balancer's idle timeout (AWS ALB 60 s, GCP 600 s), or
    # the balancer meets connections closed under it (502s)
    keepalive_timeout_s: float = 75.0
    # a request body with no byte for this long, while its handler waits for one, is answered
    # 408 and its connection closed (``api.bodies``; nginx's client_body_timeout)
    body_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """The development credential; generated at first start when empty."""

    api_key: str = ""


@dataclass(frozen=True, slots=True)
class SpoolSettings:
    """The durable spool between the recorders and the object store."""

    max_bytes: int = 20 * 1024**3
    upload_workers: int = 16  # uploads in flight; one per session at most (order kept)
    retry_base_s: float = 0.2
    retry_max_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``reelhouse serve`` needs; each component receives only its own part."""

    data_dir: Path = DEFAULT_DATA_DIR
    log_level: str = "INFO"
    log_json: bool = False
    http: HttpSettings = field(default_factory=HttpSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    recorder: RecorderSettings = field(default_factory=RecorderSettings)
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    webrtc: WebRtcSettings = field(default_factory=WebRtcSettings)


_SECTIONS = ("http", "auth", "ingest", "recorder", "spool", "storage", "webrtc")
# numbers that may be 0, and what 0 means; every other number must be finite and above 0
ZERO_MEANS = {
    "http.port": "any free port",
    "ingest.keepalive_s": "off",
    "ingest.writer_lanes": "one lane per core",
}
MAX_PORT = 65535
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def check(settings: Settings) -> Settings:
    """``settings`` when every value is in range, else ``ValueError`` naming the first one out
    (a 0 or a negative timeout, a NaN, a port past 65535, an empty host...)."""
    for section in _SECTIONS:
        part = getattr(settings, section)
        for f in fields(part):
            value, name = getattr(part, f.name), f"{section}.{f.name}"
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value) or value < 0 or (value == 0 and name not in ZERO_MEANS):
                zero = f" (or 0: {ZERO_MEANS[name]})" if name in ZERO_MEANS else ""
                raise ValueError(f"{name} must be a number above 0{zero}, got {value!r}")
    if settings.http.port > MAX_PORT:
        raise ValueError(f"http.port must be at most {MAX_PORT}, got {settings.http.port}")
    if not settings.http.host.strip():
        raise ValueError("http.host must name an address (empty would listen on every one)")
    if settings.log_level.upper() not in LOG_LEVELS:
        raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
    return settings


def _coerce(value: Any, to: Any, name: str) -> Any:
    kind = to if isinstance(to, type) else type(to)
    if kind is bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected a boolean, got {value!r}")
    if kind is Path:
        return Path(value)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {kind.__name__}, got {value!r}") from None


def _apply(obj: Any, values: Mapping[str, Any], where: str) -> Any:
    known = {f.name: getattr(obj, f.name) for f in fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"{where}: unknown setting {key!r}")
        current = known[key]
        if key in _SECTIONS and where == "settings":
            if not isinstance(value, Mapping):
                raise ValueError(f"[{key}] must be a table")
            changes[key] = _apply(current, value, key)
        else:
            changes[key] = _coerce(value, current, f"{where}.{key}")
    return replace(obj, **changes)


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """``REELHOUSE_DATA_DIR`` → data_dir; ``REELHOUSE_HTTP__PORT`` → http.port;
    ``REELHOUSE_API_KEY``/``REELHOUSE_HOST``/``REELHOUSE_PORT`` are short aliases."""
    aliases = {"API_KEY": ("auth", "api_key"), "HOST": ("http", "host"), "PORT": ("http", "port")}
    out: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :]
        if rest in aliases:
            section, key = aliases[rest]
            out.setdefault(section, {})[key] = value
        elif "__" in rest:
            section, key = rest.lower().split("__", 1)
            out.setdefault(section, {})[key] = value
        elif rest != "CONFIG":
            out[rest.lower()] = value
    return out


def load_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build settings: defaults, then the TOML file, then the environment, then ``overrides``."""
    env = os.environ if env is None else env
    settings = Settings()
    config_file = config_file or (
        Path(env["REELHOUSE_CONFIG"]) if env.get("REELHOUSE_CONFIG") else None
    )
    if config_file is not None:
        with open(config_file, "rb") as f:
            settings = _apply(settings, tomllib.load(f), "settings")
    settings = _apply(settings, _from_env(env), "settings")
    if overrides:
        settings = _apply(settings, overrides, "settings")
    return check(settings)
