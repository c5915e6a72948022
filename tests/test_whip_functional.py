"""WHIP over HTTP against a real server: an aiortc peer publishes with a channel token, a
channel subscriber sees its frames, DELETE leaves; CORS, trickle, and every refusal."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from webrtc_peer import accept_answer, make_offer

from api.apps import create_app_row
from api.keys import CHANNELS, META
from ingest.tokens import Role, mint

WAIT_S = 20.0
ICE = "stun:stun.example.net:3478"


@pytest.fixture
async def whip_server(server_factory: Any) -> Any:
    return await server_factory(webrtc={"host_addresses": "127.0.0.1", "ice_servers": ICE})


def whip_url(server: Any, appid: str, cname: str = "room1") -> str:
    return f"{server.url}/v1/apps/{appid}/channels/{cname}/whip"


async def test_publish_with_a_token_then_leave(whip_server: Any) -> None:
    app = await create_app_row(whip_server.app[META])
    token = mint(app.certificate, app.appid, "room1", "527841")
    sub = whip_server.app[CHANNELS].subscribe(app.appid, "room1")
    pc = await make_offer("vp8", rgb=(0, 255, 0))
    try:
        async with aiohttp.ClientSession() as http:
            headers = {
                "Content-Type": "application/sdp",
                "Authorization": f"Bearer {token}",
                "Origin": "http://page.example",
            }
            async with http.post(
                whip_url(whip_server, app.appid), data=pc.localDescription.sdp, headers=headers
            ) as resp:
                answer = await resp.text()
                assert resp.status == 201, answer
                assert resp.content_type == "application/sdp"
                location, etag = resp.headers["Location"], resp.headers["ETag"]
                assert location.startswith(f"/v1/apps/{app.appid}/channels/room1/whip/")
                assert resp.headers["Access-Control-Allow-Origin"] == "*"
                assert "Location" in resp.headers["Access-Control-Expose-Headers"]
                assert resp.headers.getall("Link") == [f'<{ICE}>; rel="ice-server"']
                assert resp.headers["X-Reelhouse-Uid"] == "527841"
            await accept_answer(pc, answer)
            async with asyncio.timeout(WAIT_S):
                while True:
                    frame = await sub.next_media()
                    if frame is not None and frame.kind == "video":
                        break
            pixel = frame.data.to_ndarray(format="rgb24")[120, 160]
            assert pixel[1] > 200 and pixel[0] < 60  # green, as sent
            assert frame.uid == "527841"

            patch_headers = {"Content-Type": "application/trickle-ice-sdpfrag"}
            async with http.patch(whip_server.url + location, headers=patch_headers) as resp:
                assert resp.status == 428  # no If-Match
            async with http.patch(
                whip_server.url + location,
                data="a=ice-ufrag:new\r\na=ice-pwd:restartrestartrestart00\r\n",
                headers={**patch_headers, "If-Match": etag},
            ) as resp:
                assert resp.status == 422  # an ICE restart: not supported
            async with http.patch(
                whip_server.url + location, data="", headers={**patch_headers, "If-Match": '"x"'}
            ) as resp:
                assert resp.status == 412
            async with http.delete(whip_server.url + location) as resp:
                assert resp.status == 200
            async with http.delete(whip_server.url + location) as resp:
                assert resp.status == 404
        assert whip_server.app[CHANNELS].get(app.appid, "room1").members == {}
    finally:
        await pc.close()
        sub.close()


async def test_no_token_app_takes_the_uid_parameter(whip_server: Any) -> None:
    app = await create_app_row(whip_server.app[META], token_required=False)
    pc = await make_offer("h264")
    try:
        async with aiohttp.ClientSession() as http:
            url = whip_url(whip_server, app.appid) + "?uid=dev-1"
            headers = {"Content-Type": "application/sdp"}
            async with http.post(url, data=pc.localDescription.sdp, headers=headers) as resp:
                assert resp.status == 201 and resp.headers["X-Reelhouse-Uid"] == "dev-1"
        channel = whip_server.app[CHANNELS].get(app.appid, "room1")
        assert channel is not None and list(channel.members) == ["dev-1"]
    finally:
        await pc.close()


async def test_refusals(whip_server: Any) -> None:
    app = await create_app_row(whip_server.app[META])
    other = await create_app_row(whip_server.app[META])
    pc = await make_offer("vp8")
    sdp = pc.localDescription.sdp
    await pc.close()
    good = mint(app.certificate, app.appid, "room1", "u1")
    forged = mint(other.certificate, app.appid, "room1", "u1")
    elsewhere = mint(app.certificate, app.appid, "room2", "u1")
    cases = [
        (app.appid, {}, sdp, 401, "Authorization: Bearer"),
        (app.appid, {"Authorization": "Bearer rh1.x.y"}, sdp, 401, "malformed token"),
        (app.appid, {"Authorization": f"Bearer {forged}"}, sdp, 401, "signature is not valid"),
        (app.appid, {"Authorization": f"Bearer {elsewhere}"}, sdp, 401, "not 'room1'"),
        (app.appid, {"Authorization": "Bearer " + mint(
            app.certificate, app.appid, "room1", "u1", Role.SUBSCRIBER)},
         sdp, 401, "does not allow publishing"),
        (app.appid, {"Authorization": "Bearer " + mint(
            app.certificate, app.appid, "room1", "u1", Role.PUBLISHER, 1, now=1_000_000)},
         sdp, 401, "expired"),
        (app.appid, {"Authorization": f"Bearer {good}"}, "v=0\r\nbad", 400, "no media section"),
        (app.appid, {"Authorization": f"Bearer {good}"}, b"v=0\xff\xfe", 400, "not UTF-8"),
        (app.appid, {"Authorization": f"Bearer {good}"},
         sdp + "a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n" * 65, 400, "at most 64"),
        ("0" * 32, {"Authorization": f"Bearer {good}"}, sdp, 404, "not found"),
    ]  # fmt: skip
    async with aiohttp.ClientSession() as http:
        for appid, headers, body, status, reason in cases:
            url = whip_url(whip_server, appid)
            headers = {"Content-Type": "application/sdp", **headers}
            async with http.post(url, data=body, headers=headers) as resp:
                out = await resp.json()
                assert resp.status == status, (reason, out)
                assert reason in out["message"], out
                assert resp.headers["Access-Control-Allow-Origin"] == "*"  # errors too
        async with http.post(
            whip_url(whip_server, app.appid), data=sdp, headers={"Content-Type": "text/plain"}
        ) as resp:
            assert resp.status == 415
        async with http.options(whip_url(whip_server, app.appid)) as resp:
            assert resp.status == 204
            assert "PATCH" in resp.headers["Access-Control-Allow-Methods"]
            assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
            assert "X-Reelhouse-Uid" in resp.headers["Access-Control-Expose-Headers"]
        async with http.get(whip_url(whip_server, app.appid)) as resp:
            assert resp.status == 405 and "POST" in resp.headers["Allow"]  # (RFC 9110)


def test_cli_makes_an_app_and_a_token(tmp_path: Path) -> None:
    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "api.cli", *args, "--data-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60, check=True,
            cwd=Path(__file__).parent.parent,
        )  # fmt: skip
        return done.stdout

    lines = dict(line.split(": ", 1) for line in cli("app", "create").splitlines())
    token = cli("token", "--appid", lines["appid"], "--cname", "room1", "--uid", "42").strip()
    from ingest.tokens import verify

    grant = verify(token, lines["certificate"], appid=lines["appid"], cname="room1", uid="42")
    assert grant.role is Role.PUBLISHER
    no_token = cli("app", "create", "--no-token")
    assert "tokens: not required" in no_token


def test_cli_token_with_the_wrong_data_dir_says_so(tmp_path: Path) -> None:
    """``reelhouse token`` only reads: a folder no server used is named, and left as it was."""
    wrong = tmp_path / "not-the-data-dir"
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "token", "--appid", "a", "--cname", "c", "--uid", "1",
         "--data-dir", str(wrong)],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert done.returncode == 2 and not done.stdout
    assert str(wrong) in done.stderr and "data directory" in done.stderr
    assert not wrong.exists()


async def test_a_preflight_names_no_turn_credentials(server_factory: Any) -> None:
    """OPTIONS is unauthenticated (a browser's preflight carries no credentials): it names
    the STUN servers only; the TURN server with its credentials comes with an offer's 201."""
    turn = "turn:turn.example.net:3478"
    server = await server_factory(
        webrtc={
            "host_addresses": "127.0.0.1",
            "ice_servers": f"{ICE},{turn}",
            "ice_username": "turnuser",
            "ice_credential": "s3cret",
        }
    )
    app = await create_app_row(server.app[META], token_required=False)
    pc = await make_offer("vp8")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.options(whip_url(server, "nonexistent")) as resp:
                assert resp.status == 204
                assert resp.headers.getall("Link") == [f'<{ICE}>; rel="ice-server"']
            async with http.post(
                whip_url(server, app.appid) + "?uid=7",
                data=pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp"},
            ) as resp:
                assert resp.status == 201
                links = resp.headers.getall("Link")
        assert links[0] == f'<{ICE}>; rel="ice-server"'
        assert links[1].startswith(f'<{turn}>; rel="ice-server"; username="turnuser"')
        assert 'credential="s3cret"' in links[1]
    finally:
        await pc.close()


async def test_a_full_server_says_try_later(server_factory: Any) -> None:
    """Past max_sessions an offer is 503 UNAVAILABLE with Retry-After (no fault of the offer:
    it was a 400, which clients take as final)."""
    server = await server_factory(webrtc={"host_addresses": "127.0.0.1", "max_sessions": 1})
    app = await create_app_row(server.app[META], token_required=False)
    peers = [await make_offer("vp8") for _ in range(2)]
    try:
        async with aiohttp.ClientSession() as http:
            answers = []
            for i, pc in enumerate(peers):
                async with http.post(
                    whip_url(server, app.appid) + f"?uid={i}",
                    data=pc.localDescription.sdp,
                    headers={"Content-Type": "application/sdp"},
                ) as resp:
                    answers.append(
                        (
                            resp.status,
                            resp.headers.get("Retry-After"),
                            resp.headers.get("Access-Control-Expose-Headers", ""),
                            await resp.json(content_type=None) if resp.status != 201 else None,
                        )
                    )
        assert answers[0][0] == 201
        status, retry, exposed, body = answers[1]
        assert status == 503 and retry is not None and int(retry) > 0
        assert "Retry-After" in exposed  # (not CORS-safelisted: a page could not read it)
        assert body["code"] == 14 and "try again later" in body["message"]
    finally:
        for pc in peers:
            await pc.close()
