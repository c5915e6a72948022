"""The cloud recording API's error shape and the readers of its JSON fields.

Every reader names the field by its full dotted path in the request
(``clientRequest.recordingConfig.maxIdleTime``) so a client sees exactly what to fix, in the
``{"code": 2, "reason": "<field>: <why>"}`` answer the vendor's API gives.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from enum import IntEnum, StrEnum
from typing import Any

from ingest.tokens import CNAME_RE, UID_RE

from .errors import json_type

MAX_RECORDER_UID = 2**32 - 1  # "an integer from 1 to (2^32-1), cannot be 0"
MAX_BODY_BYTES = 1024 * 1024  # a start body is a few KiB; more is a mistake or an attack
MAX_CNAME_CHARS = 64
MAX_UID_CHARS = 255  # a channel member's uid (ingest.tokens.UID_RE)
_DIGITS = re.compile(r"[0-9]+")  # str.isdecimal() would let Arabic-Indic digits through


class CloudCode(IntEnum):
    """The ``code`` of an error answer, as the vendor's API numbers them."""

    INVALID_PARAMETER = 2
    START_REPEATED = 7
    BAD_REQUEST = 8  # bad header, body not JSON, or not a JSON object
    STOP_REPEATED = 49
    ALREADY_RECORDING = 53  # that cname/uid already has a recorder
    TOKEN_EXPIRED = 109
    TOKEN_INVALID = 110
    PARAMETERS_DIFFER = 432  # start does not match the acquire's startParameter
    RESOURCE_EXPIRED = 433
    NO_FILE_RECORDED = 435  # nobody published while recording
    RESOURCE_ID_INVALID = 1001
    APPID_OR_SID_MISMATCH = 1003
    CNAME_INVALID = 1013
    LAYOUT_INVALID = 1028  # an updateLayout body that cannot be applied


class CloudError(Exception):
    """An error answer of the cloud recording API: ``{"code": N, "reason": "..."}``.

    ``field`` is the dotted path of the offending request field when there is one, kept apart
    so callers and tests need not parse ``reason``.
    """

    def __init__(
        self, code: int, reason: str, http_status: int = 400, *, field: str | None = None
    ) -> None:
        super().__init__(f"{int(code)}: {reason}")
        self.code = int(code)
        self.reason = reason
        self.http_status = http_status
        self.field = field

    def body(self) -> dict[str, Any]:
        """The JSON body the API answers with."""
        return {"code": self.code, "reason": self.reason}


def invalid(field: str, message: str, code: int = CloudCode.INVALID_PARAMETER) -> CloudError:
    """A code-2 (or ``code``) error whose reason starts with the field's path."""
    return CloudError(code, f"{field}: {message}", field=field)


class RecordingMode(StrEnum):
    """The ``{mode}`` path parameter."""

    INDIVIDUAL = "individual"
    MIX = "mix"
    WEB = "web"


def parse_mode(mode: str) -> RecordingMode:
    """The mode of the path; web page recording answers that it is not supported yet."""
    try:
        parsed = RecordingMode(mode)
    except ValueError:
        raise invalid("mode", f"{mode[:32]!r}: must be individual, mix or web") from None
    if parsed is RecordingMode.WEB:
        raise invalid(
            "mode",
            "web page recording is not supported yet by this server; use individual or mix mode",
        )
    return parsed


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(data: bytes) -> dict[str, Any]:
    """A request body as a JSON object; anything else (size, encoding, syntax) is code 8."""
    if len(data) > MAX_BODY_BYTES:
        raise CloudError(
            CloudCode.BAD_REQUEST, f"body is {len(data)} bytes; at most {MAX_BODY_BYTES}"
        )
    try:
        # NaN and Infinity are Python's extension, not JSON: they would slip past range checks.
        value = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise CloudError(CloudCode.BAD_REQUEST, "body is not UTF-8 text") from None
    except ValueError as exc:
        raise CloudError(CloudCode.BAD_REQUEST, f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise CloudError(CloudCode.BAD_REQUEST, "body is nested too deeply") from None
    return require_body(value)


def require_body(body: object) -> dict[str, Any]:
    """``body`` when it is a JSON object; code 8 otherwise (an array, a string, null)."""
    if not isinstance(body, Mapping):
        raise CloudError(
            CloudCode.BAD_REQUEST, f"body must be a JSON object, not {json_type(body)}"
        )
    return dict(body)


def join(prefix: str, name: str) -> str:
    """``prefix.name``, or ``name`` at the top."""
    return f"{prefix}.{name}" if prefix else name


def read_object(
    obj: Mapping[str, Any], name: str, prefix: str, *, required: bool = False
) -> Mapping[str, Any] | None:
    """An object field; ``None`` when absent or null (every object field is nullable)."""
    value = obj.get(name)
    field = join(prefix, name)
    if value is None:
        if required:
            raise invalid(field, "is required")
        return None
    if not isinstance(value, Mapping):
        raise invalid(field, f"must be an object, not {json_type(value)}")
    return value


def read_int(
    obj: Mapping[str, Any], name: str, prefix: str, low: int, high: int, default: int
) -> int:
    """An integer field in [low, high], ``default`` when absent or null.

    ``30.0`` is taken as 30 (JSON has one number type); ``"30"`` and ``true`` are not.
    """
    value = obj.get(name)
    if value is None:
        return default
    return check_int(value, join(prefix, name), low, high)


def check_int(value: object, field: str, low: int, high: int) -> int:
    """``value`` as an int if it is an integral JSON number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(field, f"must be a number, not {json_type(value)}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise invalid(field, f"must be an integer, got {value!r}")
    number = int(value)
    if not low <= number <= high:
        raise invalid(field, f"must be {low}..{high}, got {number}")
    return number


def read_str(obj: Mapping[str, Any], name: str, prefix: str) -> str | None:
    """A string field; ``None`` when absent or null."""
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(join(prefix, name), f"must be a string, not {json_type(value)}")
    return value


def read_bool(obj: Mapping[str, Any], name: str, prefix: str, default: bool) -> bool:
    """A boolean field (``true``/``false`` only, not 0/1); ``default`` when absent or null."""
    value = obj.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(join(prefix, name), f"must be true or false, not {json_type(value)}")
    return value


def read_str_list(obj: Mapping[str, Any], name: str, prefix: str) -> list[str] | None:
    """An array of strings; ``None`` when absent or null."""
    value = obj.get(name)
    field = join(prefix, name)
    if value is None:
        return None
    if not isinstance(value, list):
        raise invalid(field, f"must be an array of strings, not {json_type(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise invalid(f"{field}[{i}]", f"must be a string, not {json_type(item)}")
    return value


def read_cname(obj: Mapping[str, Any]) -> str:
    """The channel name: 1-64 characters of the vendor's set; code 1013 otherwise."""
    value = obj.get("cname")
    if not isinstance(value, str):
        reason = "is required" if value is None else f"must be a string, not {json_type(value)}"
        raise invalid("cname", reason, CloudCode.CNAME_INVALID)
    if not value or len(value) > MAX_CNAME_CHARS:
        raise invalid(
            "cname",
            f"must be 1 to {MAX_CNAME_CHARS} characters, got {len(value)}",
            CloudCode.CNAME_INVALID,
        )
    if not CNAME_RE.fullmatch(value):
        raise invalid(
            "cname",
            f"{value!r} has a character outside a-z A-Z 0-9 space and !#$%&()+-:;<=.>?@[]^_{{|}}~,",
            CloudCode.CNAME_INVALID,
        )
    return value


def check_recorder_uid(value: object, field: str = "uid") -> str:
    """The recording service's own uid: a string of an integer from 1 to 2^32-1."""
    if not isinstance(value, str):
        reason = "is required" if value is None else f"must be a string, not {json_type(value)}"
        raise invalid(field, reason)
    if not _DIGITS.fullmatch(value):
        raise invalid(field, f'{value[:32]!r} must be a string of digits, like "527841"')
    if len(value) > 1 and value[0] == "0":
        # "0123" and "123" would be one user to the channel but two to a string compare.
        raise invalid(field, f"{value!r} must not have leading zeros")
    if int(value) == 0:
        raise invalid(field, f"cannot be 0: must be 1 to {MAX_RECORDER_UID}")
    if int(value) > MAX_RECORDER_UID:
        raise invalid(field, f"{value} is more than {MAX_RECORDER_UID} (2^32-1)")
    return value


def check_member_uid(value: str, field: str) -> str:
    """A channel member's uid as listed in subscribe lists (any uid a publisher may have)."""
    if not UID_RE.fullmatch(value):
        raise invalid(
            field,
            f"{value[:32]!r} is not a user id: 1-{MAX_UID_CHARS} characters of A-Za-z0-9_.:@+-",
        )
    return value
