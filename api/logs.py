"""Structured logging: every record carries the session id when it has one."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from aiohttp.http_exceptions import HttpProcessingError

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    """``time level logger message key=value…`` for people."""

    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        base = (
            f"{datetime.fromtimestamp(record.created, UTC):%Y-%m-%dT%H:%M:%S.%f}"[:-3]
            + f"Z {record.levelname:<7} {record.name}: {record.getMessage()}"
        )
        if extra:
            base += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for machines."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class ClientErrorsQuiet(logging.Filter):
    """aiohttp logs every request it cannot parse (a malformed header, a line over 8 KiB, a
    bad ``Content-Length``: the client's fault, answered 400) as an ERROR with a traceback,
    so any client could fill the log with them. Such a record becomes one INFO line; the
    server's own failures keep their level and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        code = exc.code if isinstance(exc, HttpProcessingError) else None
        if code is None or not 400 <= code < 500 or record.levelno <= logging.INFO:
            return True  # (aiohttp says some at DEBUG already)
        said = " ".join(str(getattr(exc, "message", "")).split())
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg = "bad request from %s: %d %s"
        who = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.args = (who, code, said[:200])
        record.exc_info = record.exc_text = None
        # (the level was checked before the filter ran: at WARNING the line is not wanted)
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


def setup_logging(level: str = "INFO", json_lines: bool = False) -> None:
    """Route the root logger to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientErrorsQuiet) for f in server.filters):
        server.addFilter(ClientErrorsQuiet())
