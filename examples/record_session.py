"""Record a screen session end to end: START it, stream a test pattern with a tone into it,
END it, and print where the playlist and the MP4 can be downloaded.

    .venv/bin/python examples/record_session.py --server http://127.0.0.1:8080 --api-key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import json

import aiohttp

from ingest.publisher import publish

PROFILE = "customers/acme/profiles/support"
UPLOAD_POLL_S = 0.2
UPLOAD_POLLS = 150  # 30 s


async def main(server: str, api_key: str, seconds: float) -> dict[str, object]:
    auth = {"Authorization": f"Bearer {api_key}"}
    events = f"{server}/v1/{PROFILE}:processScreenRecordingSessionEvent"
    async with aiohttp.ClientSession(headers=auth) as http:
        start = {"sessionEvent": {"eventType": "EVENT_TYPE_START", "userId": "agent-7"}}
        async with http.post(events, json=start) as resp:
            resp.raise_for_status()
            session_id = (await resp.json())["sessionEvent"]["sessionId"]

        result = await publish(
            "testsrc", server=server, api_key=api_key, session_id=session_id, duration_s=seconds
        )

        end = {"sessionEvent": {"eventType": "EVENT_TYPE_END", "sessionId": session_id}}
        async with http.post(events, json=end) as resp:
            resp.raise_for_status()
        # the files go to the object store in the background: a file has its download `url`
        # once the store has confirmed it
        url = f"{server}/v1/{PROFILE}/screenRecordingSessions/{session_id}"
        for _ in range(UPLOAD_POLLS):
            async with http.get(url) as resp:
                resp.raise_for_status()
                session = await resp.json()
            if all(f["uploaded"] for f in session["files"]):
                break
            await asyncio.sleep(UPLOAD_POLL_S)
    return {
        "sessionId": session_id,
        "framesSent": result.frames_sent,
        "framesAcked": result.frames_acked,
        "recordedDuration": session["recordedDuration"],
        "files": {
            f["kind"]: f.get("url", f["key"]) for f in session["files"] if f["kind"] != "segment"
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8080")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.server, args.api_key, args.seconds)), indent=2))
