"""Errors raised by the media package, each carrying the API status it maps to."""

from __future__ import annotations


class MediaError(Exception):
    """Base class of every media error; `status` is the HTTP status the API should answer."""

    status: int = 400


class UnsupportedCodec(MediaError, ValueError):
    """A codec or track kind that the media package cannot store."""


class InvalidMedia(MediaError, ValueError):
    """Media bytes that cannot be parsed or decoded (garbage from a client)."""


class ConfigError(MediaError, ValueError):
    """A mixer setting out of its range or in conflict with another; `field` names it.

    The field is the API's own dotted path (``transcodingConfig.layoutConfig[2].x_axis``) so the
    API layer can answer in its error shape without parsing the message.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class LayoutError(ConfigError):
    """A layout setting that cannot be drawn (e.g. a vertical layout with no large window)."""


class ImageError(MediaError, ValueError):
    """A background image that could not be fetched or decoded; recording goes on without it."""
