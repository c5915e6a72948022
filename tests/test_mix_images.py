"""Background image fetching: formats, size cap, timeout and failures, against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import av
import pytest
from aiohttp import web

from mixer.compositor import Compositor, frame_planes, rgb_to_yuv, solid_frame
from mixer.errors import ImageError
from mixer.images import decode_image, fetch_image, fetch_images
from mixer.layout import LayoutSpec

SIZE = 48
RGB = "#C08040"
# JPEG and BMP in 8-bit RGB round the colour a little on the way back to Y'CbCr.
COLOR_TOLERANCE = 4
SMALL_CAP_BYTES = 1000


def encode(codec_name: str, pix_fmt: str) -> bytes:
    """A SIZE x SIZE image of one colour in the given format."""
    frame = solid_frame(SIZE, SIZE, rgb_to_yuv(RGB)).reformat(format=pix_fmt)
    codec = av.CodecContext.create(codec_name, "w")
    codec.width, codec.height, codec.pix_fmt = SIZE, SIZE, pix_fmt  # type: ignore[attr-defined]
    codec.time_base = 1  # type: ignore[attr-defined]
    packets = codec.encode(frame) + codec.encode(None)  # type: ignore[attr-defined]
    return b"".join(bytes(p) for p in packets)


IMAGES = {
    "png": encode("png", "rgb24"),
    "jpg": encode("mjpeg", "yuvj420p"),
    "bmp": encode("bmp", "bgr24"),
}


@pytest.fixture
async def base_url(aiohttp_server) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    """A server with good images, a large one, a chunked large one, text, and a stalling URL."""
    release = asyncio.Event()

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=IMAGES[request.match_info["ext"]])

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(4):  # No Content-Length: the cap is enforced while reading.
            await resp.write(b"\x89PNG\r\n\x1a\n" + bytes(SMALL_CAP_BYTES))
        return resp

    async def stall(_: web.Request) -> web.Response:
        await release.wait()  # Never answered within the client's timeout.
        return web.Response(body=b"")

    app = web.Application()
    app.router.add_get("/img.{ext}", image)
    app.router.add_get("/big.png", _big)
    app.router.add_get("/chunked.png", chunked)
    app.router.add_get("/text", _text)
    app.router.add_get("/stall", stall)
    server = await aiohttp_server(app)
    yield str(server.make_url("")).rstrip("/")
    release.set()


async def _big(_: web.Request) -> web.Response:
    return web.Response(body=IMAGES["png"] + bytes(SMALL_CAP_BYTES))


async def _text(_: web.Request) -> web.Response:
    return web.Response(text="<html>not an image</html>")


@pytest.mark.parametrize("ext", sorted(IMAGES))
async def test_formats_decode_to_their_colour(base_url: str, ext: str) -> None:
    async with aiohttp.ClientSession() as http:
        frame = await fetch_image(http, f"{base_url}/img.{ext}")
    assert (frame.width, frame.height) == (SIZE, SIZE)
    # Through the compositor: decoders tag these full range, the canvas is limited range.
    comp = Compositor(64, 64, LayoutSpec())
    comp.set_background_image(frame)
    yuv = frame_planes(comp.render(0))
    got = (int(yuv[0][32, 32]), int(yuv[1][16, 16]), int(yuv[2][16, 16]))
    want = rgb_to_yuv(RGB)
    assert all(abs(a - b) <= COLOR_TOLERANCE for a, b in zip(got, want, strict=True)), got


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/missing.png", "HTTP 404"),
        ("/big.png", "over"),
        ("/chunked.png", "over"),
        ("/text", "not a JPG, PNG or BMP"),
        ("/stall", "cannot fetch"),
    ],
)
async def test_failures_are_image_errors(base_url: str, path: str, message: str) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(ImageError, match=message):
            cap = SMALL_CAP_BYTES if path in ("/big.png", "/chunked.png") else 6 * 1024 * 1024
            await fetch_image(http, base_url + path, timeout_s=0.3, max_bytes=cap)


async def test_fetch_images_keeps_going_past_failures(base_url: str) -> None:
    urls = [f"{base_url}/img.png", f"{base_url}/missing.png", f"{base_url}/img.png"]
    async with aiohttp.ClientSession() as http:
        got = await fetch_images(http, [*urls, "file:///etc/passwd"])
    assert set(got) == {urls[0], urls[1], "file:///etc/passwd"}
    assert got[urls[0]] is not None and got[urls[1]] is None and got["file:///etc/passwd"] is None


def test_corrupt_image_bytes() -> None:
    with pytest.raises(ImageError):
        decode_image(b"\x89PNG\r\n\x1a\n" + bytes(100))
