"""examples/cloud_record.py, as docs/cloud_recording.md shows it, against a real server and the
test S3 server: the MP4 it reports is in the bucket and holds the seconds it recorded."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import av
import pytest
from s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3

from api.apps import create_app_row
from api.customers import create_customer
from api.keys import META

pytestmark = pytest.mark.slow

RECORD_S = 4.0
EXAMPLE_TIMEOUT_S = 90.0


async def test_cloud_example_records_a_channel(
    server: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    app = await create_app_row(server.app[META], token_required=False)
    customer_id, secret = await create_customer(server.app[META])
    example = Path(__file__).parent.parent / "examples" / "cloud_record.py"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(example), "--server", server.url, "--customer-id", customer_id,
        "--customer-secret", secret, "--appid", app.appid, "--endpoint", s3.endpoint,
        "--bucket", s3_bucket, "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY,
        "--seconds", str(RECORD_S), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), EXAMPLE_TIMEOUT_S)
    assert proc.returncode == 0
    summary = json.loads(out)
    assert summary["statusWhileRecording"] == 5 and summary["uploadingStatus"] == "uploaded"
    names = [f["fileName"] for f in summary["fileList"]]
    assert names[0].endswith(".m3u8") and names[1].endswith(".mp4")
    obj = await asyncio.to_thread(
        s3.client().get_object, Bucket=s3_bucket, Key=f"example/{names[1]}"
    )
    mp4 = tmp_path / names[1]
    mp4.write_bytes(obj["Body"].read())
    with av.open(str(mp4)) as container:
        video = container.streams.video[0]
        assert (video.width, video.height) == (640, 360) and container.streams.audio
        duration_s = float(container.duration or 0) / av.time_base
    assert duration_s == pytest.approx(RECORD_S, abs=1.0)  # the calls' round trips on top
