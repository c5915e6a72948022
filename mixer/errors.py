"""Errors raised by the media package, each carrying the API status it maps to."""

from __future__ import annotations


class MediaError(Exception):
    """Base class of every media error; `status` is the HTTP status the API should answer."""

    status: int = 400


class UnsupportedCodec(MediaError, ValueError):
    """A codec or track kind that the media package cannot store."""


class InvalidMedia(MediaError, ValueError):
    """Media bytes that cannot be parsed or decoded (garbage from a client)."""
