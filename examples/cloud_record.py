"""Record a channel with the cloud recording API, end to end: publish a test pattern with a tone
into a channel, acquire a resource, start a mix recording (HLS and MP4) into an S3 bucket, query
it, stop it, and print the files it wrote.

    .venv/bin/python examples/cloud_record.py --server http://127.0.0.1:8080 \\
        --customer-id ID --customer-secret SECRET --appid APPID \\
        --endpoint http://127.0.0.1:8333 --bucket recordings --access-key AK --secret-key SK

The app is one made with ``reelhouse app create --no-token``; the customer with
``reelhouse customer create``. Any S3-compatible bucket does (``storageConfig`` vendor 11).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
from typing import Any

import aiohttp

from ingest.publisher import Channel, Publisher

RECORDER_UID = "527841"  # the uid the recorder joins the channel as (the seed's)
PUBLISHER_UID = "1001"


async def call(http: aiohttp.ClientSession, url: str, body: dict[str, Any] | None = None) -> Any:
    """POST (or GET without a body) one call; the API's error shape is raised as it is."""
    method = "GET" if body is None else "POST"
    async with http.request(method, url, json=body) as resp:
        out = await resp.json()
        if resp.status != 200:
            raise SystemExit(f"{method} {url}: HTTP {resp.status} {json.dumps(out)}")
        return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    welcomed = asyncio.Event()
    publisher = Publisher(
        "testsrc",
        server=args.server,
        api_key="",
        duration_s=args.seconds + 5,  # on air for the whole recording; cancelled at the end
        channel=Channel(args.appid, args.cname, PUBLISHER_UID),
        on_event=lambda name, _: welcomed.set() if name == "welcome" else None,
    )
    on_air = asyncio.create_task(publisher.publish())
    credentials = base64.b64encode(f"{args.customer_id}:{args.customer_secret}".encode())
    base = f"{args.server}/v1/apps/{args.appid}/cloud_recording"
    headers = {"Authorization": "Basic " + credentials.decode()}
    try:
        await asyncio.wait_for(welcomed.wait(), 10)
        async with aiohttp.ClientSession(headers=headers) as http:
            # 1. a resource for one recording of the channel
            acquired = await call(
                http,
                f"{base}/acquire",
                {"cname": args.cname, "uid": RECORDER_UID, "clientRequest": {}},
            )
            rid = acquired["resourceId"]
            # 2. start: everyone in the channel, mixed into one 640x360 picture
            start = {
                "cname": args.cname,
                "uid": RECORDER_UID,
                "clientRequest": {
                    "recordingConfig": {
                        "channelType": 0,
                        "streamTypes": 2,
                        "maxIdleTime": 30,
                        "transcodingConfig": {
                            "width": 640,
                            "height": 360,
                            "fps": 15,
                            "bitrate": 600,
                            "mixedVideoLayout": 1,
                        },
                    },
                    "recordingFileConfig": {"avFileType": ["hls", "mp4"]},
                    "storageConfig": {
                        "vendor": 11,
                        "region": 0,
                        "bucket": args.bucket,
                        "accessKey": args.access_key,
                        "secretKey": args.secret_key,
                        "fileNamePrefix": ["example"],
                        "extensionParams": {"endpoint": args.endpoint},
                    },
                },
            }
            sid = (await call(http, f"{base}/resourceid/{rid}/mode/mix/start", start))["sid"]
            session = f"{base}/resourceid/{rid}/sid/{sid}/mode/mix"
            # 3. record for a while, then query: status 5 is "recording"
            await asyncio.sleep(args.seconds)
            status = (await call(http, f"{session}/query"))["serverResponse"]["status"]
            # 4. stop: the answer lists the files, and whether the bucket has them all
            stop = {"cname": args.cname, "uid": RECORDER_UID, "clientRequest": {}}
            stopped = (await call(http, f"{session}/stop", stop))["serverResponse"]
    finally:
        on_air.cancel()
        await asyncio.gather(on_air, return_exceptions=True)
    return {
        "resourceId": rid,
        "sid": sid,
        "statusWhileRecording": status,
        "uploadingStatus": stopped["uploadingStatus"],
        "fileList": stopped["fileList"],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8080")
    parser.add_argument("--customer-id", required=True)
    parser.add_argument("--customer-secret", required=True)
    parser.add_argument("--appid", required=True, help="an app made with --no-token")
    parser.add_argument("--cname", default="example-room")
    parser.add_argument("--endpoint", required=True, help="the S3 endpoint URL")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--access-key", required=True)
    parser.add_argument("--secret-key", required=True)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to record")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
