"""Background images from URLs: fetched with a timeout and a size cap, decoded with PyAV.

A mix goes on with its background colour when an image fails (the cloud recording API applies
an image "only after it is successfully downloaded"), so :func:`fetch_images` logs a failure
and answers None for that URL instead of raising.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

import aiohttp
import av
import av.error
from av.video.codeccontext import VideoCodecContext
from av.video.frame import VideoFrame

from mixer.errors import ImageError

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 6 * 1024 * 1024  # The API's cap on a background image.
FETCH_TIMEOUT_S = 10.0
READ_CHUNK_BYTES = 64 * 1024
# A small file can decode to a huge picture; past this many pixels it is refused.
MAX_IMAGE_PIXELS = 8192 * 8192
# Leading bytes of each accepted format, and the FFmpeg decoder for it.
SIGNATURES = ((b"\xff\xd8\xff", "mjpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"BM", "bmp"))


def sniff(data: bytes) -> str:
    """The decoder for JPG, PNG or BMP bytes, told by their signature; ImageError otherwise."""
    for signature, decoder in SIGNATURES:
        if data.startswith(signature):
            return decoder
    raise ImageError("image is not a JPG, PNG or BMP")


def decode_image(data: bytes) -> VideoFrame:
    """Decode one still image (CPU work: call it from a worker thread)."""
    codec = av.CodecContext.create(sniff(data), "r")
    assert isinstance(codec, VideoCodecContext)  # PyAV typing only.
    try:
        frames = codec.decode(av.Packet(data)) + codec.decode(None)
    except av.error.FFmpegError as exc:
        raise ImageError(f"cannot decode image: {exc}") from exc
    frame = next((f for f in frames if isinstance(f, VideoFrame)), None)
    if frame is None:
        raise ImageError("image decoded to nothing")
    if frame.width * frame.height > MAX_IMAGE_PIXELS:
        raise ImageError(f"image of {frame.width}x{frame.height} pixels is too large")
    return frame


async def fetch_image(
    session: aiohttp.ClientSession,
    url: str,
    *,
    timeout_s: float = FETCH_TIMEOUT_S,
    max_bytes: int = MAX_IMAGE_BYTES,
) -> VideoFrame:
    """Download and decode one image; ImageError if it is unreachable, too big or not an image."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ImageError(f"image URL must be http or https: {url!r}")
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                raise ImageError(f"image URL answered HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise ImageError(f"image is over {max_bytes} bytes")
            body = bytearray()
            # Counted as it arrives: a server may send more than its Content-Length says.
            async for chunk in resp.content.iter_chunked(READ_CHUNK_BYTES):
                body += chunk
                if len(body) > max_bytes:
                    raise ImageError(f"image is over {max_bytes} bytes")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ImageError(f"cannot fetch image: {exc!r}") from exc
    return await asyncio.to_thread(decode_image, bytes(body))


async def fetch_images(
    session: aiohttp.ClientSession, urls: Iterable[str], *, timeout_s: float = FETCH_TIMEOUT_S
) -> dict[str, VideoFrame | None]:
    """Fetch several images at once; a failed one is logged and maps to None."""
    unique = list(dict.fromkeys(urls))

    async def one(url: str) -> VideoFrame | None:
        try:
            return await fetch_image(session, url, timeout_s=timeout_s)
        except ImageError as exc:
            log.warning("background image %s not used: %s", url, exc)
            return None

    results = await asyncio.gather(*(one(u) for u in unique))
    return dict(zip(unique, results, strict=True))
