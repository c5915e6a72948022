"""The S3 client's failures mapped onto the storage layer's three kinds: ``ObjectNotFound``;
``StoreRefused`` when the service answered no (wrong keys, missing bucket, policy: the bucket
owner's problem, retrying will not help); ``StoreUnavailable`` when it could not be reached or
failed on its side (retry later)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)

from .errors import ObjectNotFound, StorageError, StoreRefused, StoreUnavailable

if TYPE_CHECKING:
    from .s3 import S3Config

# error codes that mean "the service is in trouble", not "the request is wrong"
_TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "OperationAborted",
        "ThrottlingException",
        "Throttling",
        "TooManyRequests",
        "RequestLimitExceeded",
        "BadDigest",  # (the body was damaged on its way: sending it again is the cure)
        "IncompleteBody",
        "XAmzContentSHA256Mismatch",
        # a multipart upload aborted under us (a lifecycle rule, another abort): the whole
        # upload is done again, so the file goes up rather than reading as "not found"
        "NoSuchUpload",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# what an operator reads for the refusals users make most
_REFUSAL_HINTS = {
    "NoSuchBucket": "the bucket does not exist",
    "InvalidAccessKeyId": "the access key is not known to the storage service",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
    "AccessDenied": "the credentials may not do this on the bucket",
    "ExpiredToken": "the STS token has expired",
    "InvalidToken": "the STS token is not valid",
    "InvalidBucketName": "the bucket name is not valid",
    "AllAccessDisabled": "all access to the bucket is disabled",
    "403": "the credentials were refused",
}


def map_error(exc: BaseException, what: str, config: S3Config) -> StorageError:
    """One storage error for any failure of the S3 client."""
    if isinstance(exc, StorageError):
        return exc
    where = config.describe()
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = str(error.get("Message") or code)
        if code in _NOT_FOUND_CODES or (
            status == 404 and code != "NoSuchBucket" and code not in _TRANSIENT_CODES
        ):
            return ObjectNotFound(f"{what}: not found in {where}", code="NoSuchKey")
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return StoreUnavailable(f"{what}: {where} failed: {code} {message}", code=code)
        hint = _REFUSAL_HINTS.get(code, message)
        return StoreRefused(f"{what}: {where} refused: {code}: {hint}", code=code or str(status))
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | ParamValidationError):
        # this server's configuration, not the network: retrying cannot help
        return StoreRefused(f"{what}: {where}: {exc}", code="Configuration")
    if isinstance(exc, BotoCoreError | aiohttp.ClientError | OSError | TimeoutError):
        return StoreUnavailable(f"{what}: {where} unreachable: {exc}", code="Unreachable")
    return StoreUnavailable(f"{what}: {where} failed: {exc!r}", code=type(exc).__name__)
