"""Errors raised by the storage layer; each carries an HTTP-like status for the API edge."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every storage failure; ``status`` is the HTTP status an API maps it to."""

    status: int = 500

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code  # the store's own error code where it gave one ("NoSuchBucket", ...)


class ObjectNotFound(StorageError, FileNotFoundError):
    """The key is not in the object store."""

    status = 404


class StoreRefused(StorageError, PermissionError):
    """The store answered but refused (credentials, bucket, policy): the user's fault."""

    status = 400


class StoreUnavailable(StorageError, ConnectionError):
    """The store could not be reached or failed on its side: retry later."""

    status = 503


class SpoolFull(StorageError, OSError):
    """The spool reached its size cap and the configured policy refuses new files."""

    status = 507


class StorageConfigError(StorageError, ValueError):
    """A storage configuration (the API's ``storageConfig``) is not valid; ``field`` names it."""

    status = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"storageConfig.{field}: {message}", code="InvalidStorageConfig")
        self.field = field


class MetaConflict(StorageError, ValueError):
    """A metadata write conflicts with a row that already exists."""

    status = 409
