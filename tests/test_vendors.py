"""storageConfig of the cloud recording API: every rule of the seed, and the S3 settings each
vendor turns into; the registry that keeps user stores across a restart."""

from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3

from storage.errors import StorageConfigError, StoreRefused
from storage.objects_local import LocalObjectStore
from storage.registry import DEFAULT_STORE_ID, StoreRegistry
from storage.vendors import check_public_endpoint, parse_storage_config


def cfg(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "vendor": 1,
        "region": 0,
        "bucket": "my-recordings",
        "accessKey": "AK",
        "secretKey": "SK",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def test_amazon_region_numbers_become_region_ids() -> None:
    s3 = parse_storage_config(cfg(region=7)).to_s3()
    assert (s3.region, s3.endpoint_url, s3.bucket) == ("eu-central-1", None, "my-recordings")
    assert parse_storage_config(cfg(region=25)).to_s3().region == "eu-south-1"


def test_seed_example_alibaba_with_prefix() -> None:
    parsed = parse_storage_config(
        cfg(vendor=2, region=3, fileNamePrefix=["directory1", "directory2"])
    )
    s3 = parsed.to_s3()
    assert s3.endpoint_url == "https://oss-cn-beijing.aliyuncs.com"
    assert s3.addressing_style == "virtual" and s3.prefix == "directory1/directory2/"


def test_s3_compatible_takes_its_endpoint() -> None:
    s3 = parse_storage_config(
        cfg(vendor=11, region=0, extensionParams={"endpoint": "s3.example.com"})
    ).to_s3()
    assert (s3.endpoint_url, s3.addressing_style) == ("https://s3.example.com", "path")
    local = parse_storage_config(
        cfg(vendor=11, extensionParams={"endpoint": "http://127.0.0.1:9000/"})
    )
    assert local.to_s3().endpoint_url == "http://127.0.0.1:9000"


def test_google_and_tencent_endpoints() -> None:
    assert parse_storage_config(cfg(vendor=6, region=3)).to_s3().endpoint_url == (
        "https://storage.googleapis.com"
    )
    assert parse_storage_config(cfg(vendor=3, region=2)).to_s3().endpoint_url == (
        "https://cos.ap-shanghai.myqcloud.com"
    )


def test_sse_and_tag_are_mapped() -> None:
    s3 = parse_storage_config(cfg(extensionParams={"sse": "kms", "tag": "team=media"})).to_s3()
    assert (s3.sse, s3.tagging) == ("aws:kms", "team=media")
    assert parse_storage_config(cfg(extensionParams={"sse": "aes256"})).to_s3().sse == "AES256"


def test_round_trip_through_json() -> None:
    raw = cfg(
        vendor=11,
        fileNamePrefix=["a", "b2"],
        stsToken="tok",
        stsExpiration=int(time.time()) + 3600,
        extensionParams={"endpoint": "https://s3.example.com", "tag": "k=v"},
    )
    raw["vendor"] = 1
    raw["extensionParams"].pop("endpoint")
    parsed = parse_storage_config(raw)
    assert parse_storage_config(parsed.to_json()) == parsed


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"vendor": None}, "vendor", "is required"),
        ({"vendor": 4}, "vendor", "unknown vendor"),
        ({"vendor": 5}, "vendor", "no S3-compatible API"),
        ({"vendor": 7}, "vendor", "use vendor 11"),
        ({"vendor": "1"}, "vendor", "must be an integer"),
        ({"region": 17}, "region", "not a region number of Amazon S3"),
        ({"vendor": 2, "region": 26}, "region", "not a region number of Alibaba Cloud"),
        ({"bucket": "My_Bucket"}, "bucket", "not a valid bucket name"),
        ({"bucket": "ab"}, "bucket", "not a valid bucket name"),
        ({"bucket": "192.168.1.1"}, "bucket", "IP address"),
        ({"accessKey": ""}, "accessKey", "is empty"),
        ({"secretKey": None}, "secretKey", "is required"),
        ({"fileNamePrefix": ["ok", "not/ok"]}, "fileNamePrefix", "only letters"),
        ({"fileNamePrefix": ["a-b"]}, "fileNamePrefix", "only letters"),
        ({"fileNamePrefix": [""]}, "fileNamePrefix", "no empty parts"),
        ({"fileNamePrefix": "dir"}, "fileNamePrefix", "array of strings"),
        ({"fileNamePrefix": ["a" * 64, "b" * 63]}, "fileNamePrefix", "at most 128"),
        ({"vendor": 6, "stsToken": "t"}, "stsToken", "vendors 1, 2 and 3 only"),
        ({"stsToken": "t", "stsExpiration": 1000}, "stsExpiration", "already expired"),
        ({"stsExpiration": 2**40}, "stsExpiration", "without stsToken"),
        ({"extensionParams": {"sse": "des"}}, "extensionParams.sse", "one of kms, aes256"),
        ({"vendor": 2, "extensionParams": {"sse": "kms"}}, "extensionParams.sse", "Amazon S3 only"),
        ({"vendor": 3, "extensionParams": {"tag": "a=b"}}, "extensionParams.tag", "only"),
        ({"vendor": 11}, "extensionParams.endpoint", "is required for vendor 11"),
        ({"extensionParams": {"endpoint": "x.com"}}, "extensionParams.endpoint", "vendor 11 only"),
        (
            {"vendor": 11, "extensionParams": {"endpoint": "https://x.com/bucket"}},
            "extensionParams.endpoint",
            "without a path",
        ),
        ({"extensionParams": "sse"}, "extensionParams", "must be an object"),
    ],
)
def test_each_rule_names_its_field(changes: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(StorageConfigError) as err:
        parse_storage_config(cfg(**changes))
    assert err.value.field == field
    assert message in str(err.value) and str(err.value).startswith(f"storageConfig.{field}:")


def test_prefix_of_exactly_128_characters_is_accepted() -> None:
    parsed = parse_storage_config(cfg(fileNamePrefix=["a" * 63, "b" * 63]))
    assert len(parsed.prefix) == 128


def test_not_an_object() -> None:
    with pytest.raises(StorageConfigError, match="must be an object"):
        parse_storage_config(["vendor", 1])


async def test_registry_checks_persists_and_resolves_after_restart(
    s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    good = parse_storage_config(
        cfg(
            vendor=11,
            bucket=s3_bucket,
            accessKey=ACCESS_KEY,
            secretKey=SECRET_KEY,
            fileNamePrefix=["tenant1"],
            extensionParams={"endpoint": s3.endpoint},
        )
    )
    default = LocalObjectStore(tmp_path / "objects")
    registry = StoreRegistry(
        tmp_path / "stores", default, {"connect_timeout_s": 2.0}, private_endpoints=True
    )
    await registry.start()
    store_id = await registry.register(good)
    assert store_id == await registry.register(good)  # the same config, the same id
    assert registry.resolve(DEFAULT_STORE_ID) is default
    await registry.resolve(store_id).put_bytes("s1/index.m3u8", b"#EXTM3U\n")
    saved = tmp_path / "stores" / f"{store_id}.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600  # it holds the user's secret key
    await registry.aclose()

    # a restarted server resolves the id from disk and reaches the same bucket
    again = StoreRegistry(
        tmp_path / "stores", LocalObjectStore(tmp_path / "objects"), private_endpoints=True
    )
    await again.start()
    assert await again.resolve(store_id).get_bytes("s1/index.m3u8") == b"#EXTM3U\n"
    head = await asyncio.to_thread(
        s3.client().head_object, Bucket=s3_bucket, Key="tenant1/s1/index.m3u8"
    )
    assert head["ContentType"] == "application/vnd.apple.mpegurl"

    bad = parse_storage_config(
        cfg(
            vendor=11,
            bucket=s3_bucket,
            accessKey=ACCESS_KEY,
            secretKey="wrong",
            extensionParams={"endpoint": s3.endpoint},
        )
    )
    with pytest.raises(StoreRefused) as err:
        await again.register(bad)
    assert err.value.code == "SignatureDoesNotMatch"
    assert sorted(p.name for p in (tmp_path / "stores").iterdir()) == [saved.name]
    with pytest.raises(StoreRefused, match="no storage config registered"):
        again.resolve("sc-unknown")
    await again.forget(store_id)
    assert not saved.exists()
    await again.aclose()


async def test_a_config_being_registered_again_is_not_forgotten(
    s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    """A recording ends (its config forgotten) while another start registers the same config:
    the start keeps it, on disk and open."""
    good = parse_storage_config(
        cfg(vendor=11, bucket=s3_bucket, accessKey=ACCESS_KEY, secretKey=SECRET_KEY,
            extensionParams={"endpoint": s3.endpoint})
    )  # fmt: skip
    registry = StoreRegistry(
        tmp_path / "stores", LocalObjectStore(tmp_path / "objects"), private_endpoints=True
    )
    await registry.start()
    try:
        store_id = await registry.register(good)
        again = asyncio.ensure_future(registry.register(good))
        await asyncio.sleep(0)  # one turn of the loop: the second register is checking
        await registry.forget(store_id)
        assert await again == store_id
        assert registry.registered() == {store_id}
        assert (tmp_path / "stores" / f"{store_id}.json").exists()
        await registry.resolve(store_id).put_bytes("k.txt", b"still open")
        # a session started with it while the caller was deciding: asked at the last moment
        await registry.forget(store_id, still_needed=lambda: True)
        assert registry.registered() == {store_id}
        await registry.forget(store_id)  # now nothing registers it: gone
        assert registry.registered() == set()
        assert not (tmp_path / "stores" / f"{store_id}.json").exists()
    finally:
        await registry.aclose()


@pytest.mark.parametrize(
    "endpoint",
    ["http://127.0.0.1:8333", "http://localhost:9000", "https://10.1.2.3", "http://169.254.169.254",
     "http://[::1]:9000", "https://192.168.0.7"],
)  # fmt: skip
def test_an_endpoint_on_a_non_public_address_is_refused(endpoint: str) -> None:
    """A customer's storageConfig must not point the server at its own network (the
    loopback, the LAN, a cloud's metadata service) unless [storage] private_endpoints."""
    with pytest.raises(StorageConfigError, match="not a public address"):
        check_public_endpoint(endpoint)


def test_an_endpoint_on_a_public_address_is_taken() -> None:
    check_public_endpoint("https://8.8.8.8")  # (a literal: no DNS needed here)
    check_public_endpoint("https://no-such-host.invalid")  # left to the bucket check
