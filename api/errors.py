"""The ``rpcStatus`` error model of the screen-recording API and its HTTP mapping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ingest.errors import RpcCode

# The HTTP status gRPC-JSON transcoding (grpc-gateway) answers for each code.
HTTP_STATUS: dict[RpcCode, int] = {
    RpcCode.OK: 200,
    RpcCode.CANCELLED: 499,
    RpcCode.UNKNOWN: 500,
    RpcCode.INVALID_ARGUMENT: 400,
    RpcCode.DEADLINE_EXCEEDED: 504,
    RpcCode.NOT_FOUND: 404,
    RpcCode.ALREADY_EXISTS: 409,
    RpcCode.PERMISSION_DENIED: 403,
    RpcCode.RESOURCE_EXHAUSTED: 429,
    RpcCode.FAILED_PRECONDITION: 400,
    RpcCode.ABORTED: 409,
    RpcCode.OUT_OF_RANGE: 400,
    RpcCode.UNIMPLEMENTED: 501,
    RpcCode.INTERNAL: 500,
    RpcCode.UNAVAILABLE: 503,
    RpcCode.DATA_LOSS: 500,
    RpcCode.UNAUTHENTICATED: 401,
}


def rpc_status(
    code: RpcCode, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """An ``rpcStatus`` body: ``{"code", "message", "details"}``."""
    return {"code": int(code), "message": message, "details": details or []}


def rpc_error(
    code: RpcCode, message: str, headers: dict[str, str] | None = None
) -> web.HTTPException:
    """An aiohttp exception with the ``rpcStatus`` body and the HTTP status of ``code``."""
    status = HTTP_STATUS[code]
    exc = web.HTTPException(
        text=web.json_response(rpc_status(code, message)).text,
        content_type="application/json",
        headers=headers,
    )
    exc.set_status(status)
    return exc


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type ("a string", "an array", ...), for reasons a
    client can read."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
