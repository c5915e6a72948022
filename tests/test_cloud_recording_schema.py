"""The cloud recording API's request bodies (issue 8, seed 001): every field, default, range and
"cannot be set together" rule, each fault answered with the vendor's code and the field's path.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.cloud_recording_schema import (
    EVERYONE,
    NOBODY,
    ChannelType,
    CloudCode,
    CloudError,
    DecryptionMode,
    RecordingFileConfig,
    StreamMode,
    StreamTypes,
    UidFilter,
    UidLists,
    VideoStreamType,
    parse_acquire,
    parse_json,
    parse_start,
    parse_stop,
    parse_update,
    parse_update_layout,
)
from mixer.audiomix import AudioProfile
from mixer.layout import LayoutMode, RenderMode
from mixer.mix_config import FileType

# The request example of the seed, byte for byte as its curl command sends it.
SEED_START_BODY = """{
"cname": "<your_channel_name>",
"uid": "527841",
"clientRequest": {
"recordingConfig": {
"channelType": 1,
"streamTypes": 2,
"streamMode": "default",
"videoStreamType": 0,
"maxIdleTime": 30,
"subscribeAudioUids": ["123", "456"],
"subscribeVideoUids": ["123", "456"],
"subscribeUidGroup": 0
},
"recordingFileConfig": {
"avFileType": ["hls"]
},
"storageConfig": {
"vendor": 2,
"region": 3,
"bucket": "xxxxx",
"accessKey": "xxxxx",
"secretKey": "xxxxx",
"fileNamePrefix": ["directory1", "directory2"]
}
}
}"""
RC = "clientRequest.recordingConfig"
TC = f"{RC}.transcodingConfig"
SALT = base64.b64encode(bytes(range(32))).decode()


def seed() -> dict[str, Any]:
    """A fresh copy of the seed's start body."""
    return json.loads(SEED_START_BODY)


def body(*, drop: tuple[str, ...] = (), **changes: Any) -> dict[str, Any]:
    """The seed body with ``changes`` set and ``drop`` removed, by dotted path under
    clientRequest (``recordingConfig.maxIdleTime``)."""
    out = seed()
    for path, value in changes.items():
        *parents, leaf = path.replace("__", ".").split(".")
        node = out["clientRequest"]
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    for path in drop:
        *parents, leaf = path.split(".")
        node = out["clientRequest"]
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
    return out


def rec(**fields: Any) -> dict[str, Any]:
    """The seed body with recordingConfig fields replaced (None removes one)."""
    out = seed()
    config = out["clientRequest"]["recordingConfig"]
    for name, value in fields.items():
        if value is None:
            config.pop(name, None)
        else:
            config[name] = value
    return out


def fails(call: Callable[..., object], *args: Any) -> CloudError:
    """The CloudError that ``call(*args)`` raises."""
    with pytest.raises(CloudError) as info:
        call(*args)
    return info.value


def assert_fault(err: CloudError, code: int, field: str, *words: str) -> None:
    """The error has ``code``, names ``field`` first in its reason, and says ``words``."""
    assert err.code == code, err.reason
    assert err.field == field, err.reason
    assert err.reason.startswith(f"{field}: "), err.reason
    for word in words:
        assert word in err.reason, err.reason
    assert err.body() == {"code": code, "reason": err.reason}
    assert err.http_status == 400


def start_fault(b: dict[str, Any], field: str, *words: str, mode: str = "individual") -> None:
    assert_fault(fails(parse_start, b, mode), CloudCode.INVALID_PARAMETER, field, *words)


# --- the seed's example ---------------------------------------------------------------------


def test_seed_example_parses_with_every_default() -> None:
    start = parse_start(parse_json(SEED_START_BODY.encode()), "individual")
    assert (start.cname, start.uid, start.mode) == ("<your_channel_name>", "527841", "individual")
    cfg = start.config
    r = cfg.recording
    assert r.channel_type is ChannelType.LIVE
    assert r.stream_types is StreamTypes.AUDIO_AND_VIDEO
    assert r.stream_mode is StreamMode.DEFAULT
    assert r.video_stream_type is VideoStreamType.HIGH
    assert r.max_idle_time_s == 30
    assert r.audio_uids == UidLists(subscribe=("123", "456"))
    assert r.video_uids == UidLists(subscribe=("123", "456"))
    assert r.subscribe_uid_group == 0
    # Defaults of fields the example leaves out.
    assert r.decryption_mode is DecryptionMode.NONE and r.secret is None and r.salt is None
    assert r.audio_profile is AudioProfile.MONO_48K
    assert cfg.token is None and cfg.snapshot is None and cfg.mix is None
    assert cfg.recording_file == RecordingFileConfig((FileType.HLS,))
    assert not start.snapshots_only
    assert (cfg.storage.vendor, cfg.storage.region, cfg.storage.bucket) == (2, 3, "xxxxx")
    assert cfg.storage.prefix == "directory1/directory2/"
    assert r.audio_filter.admits("123") and r.audio_filter.admits("456")
    assert not r.audio_filter.admits("789") and not r.video_filter.admits("789")


def test_seed_example_in_mix_mode_gets_the_transcoding_defaults() -> None:
    start = parse_start(rec(subscribeUidGroup=None), "mix")
    mix = start.config.mix
    assert mix is not None
    assert (mix.width, mix.height, mix.fps, mix.bitrate_kbps) == (360, 640, 15, 500)
    assert mix.layout.mode is LayoutMode.FLOATING and mix.background_color == "#000000"
    assert mix.audio_profile is AudioProfile.MONO_48K
    assert mix.file_types == frozenset({FileType.HLS})
    assert start.config.recording.subscribe_uid_group is None  # required in individual only


def test_minimal_recording_config_takes_the_seed_defaults() -> None:
    b = body(recordingConfig={"subscribeUidGroup": 2}, drop=("recordingFileConfig",))
    r = parse_start(b, "individual").config.recording
    assert r.channel_type is ChannelType.COMMUNICATION
    assert r.stream_types is StreamTypes.AUDIO_AND_VIDEO
    assert (r.max_idle_time_s, r.video_stream_type, r.stream_mode) == (30, 0, "default")
    assert r.audio_filter == EVERYONE and r.video_filter == EVERYONE
    # Without snapshotConfig, an absent recordingFileConfig is the default ["hls"].
    assert parse_start(b, "individual").config.recording_file == RecordingFileConfig()


def test_requests_are_frozen_and_hide_secrets() -> None:
    b = rec(decryptionMode=1, secret="s3cr3t")
    b["clientRequest"]["token"] = "tok-en"
    b["clientRequest"]["storageConfig"]["secretKey"] = "bucket-secret"
    start = parse_start(b, "individual")
    with pytest.raises(AttributeError):
        start.cname = "other"  # type: ignore[misc]
    for secret in ("s3cr3t", "tok-en", "bucket-secret"):
        assert secret not in repr(start)
    assert start.config.token == "tok-en" and start.config.recording.secret == "s3cr3t"


# --- the error shape and the body ----------------------------------------------------------


def test_error_codes_are_the_vendors() -> None:
    assert {c.name: int(c) for c in CloudCode} == {
        "INVALID_PARAMETER": 2,
        "START_REPEATED": 7,
        "BAD_REQUEST": 8,
        "STOP_REPEATED": 49,
        "ALREADY_RECORDING": 53,
        "TOKEN_EXPIRED": 109,
        "TOKEN_INVALID": 110,
        "PARAMETERS_DIFFER": 432,
        "RESOURCE_EXPIRED": 433,
        "NO_FILE_RECORDED": 435,
        "RESOURCE_ID_INVALID": 1001,
        "APPID_OR_SID_MISMATCH": 1003,
        "CNAME_INVALID": 1013,
        "LAYOUT_INVALID": 1028,
    }
    err = CloudError(CloudCode.RESOURCE_EXPIRED, "resource expired", 404)
    assert (err.code, err.http_status, err.body()) == (
        433,
        404,
        {"code": 433, "reason": "resource expired"},
    )
    assert type(err.body()["code"]) is int  # not the enum: json.dumps must give a plain number


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[1, 2]", b'"text"', b"null", b"42", b'{"a": NaN}', b"\xff\xfe{}", b"{}" * 1],
)
def test_bad_json_or_not_an_object_is_code_8(raw: bytes) -> None:
    if raw == b"{}":
        assert parse_json(raw) == {}
        return
    assert fails(parse_json, raw).code == CloudCode.BAD_REQUEST


def test_oversized_body_is_code_8() -> None:
    err = fails(parse_json, b" " * (1024 * 1024 + 1))
    assert err.code == CloudCode.BAD_REQUEST and "bytes" in err.reason


@pytest.mark.parametrize(
    "parse", [parse_acquire, parse_stop, parse_update_layout, lambda b: parse_start(b, "mix")]
)
def test_a_decoded_body_that_is_not_an_object_is_code_8(parse: Callable[[object], Any]) -> None:
    values: list[object] = [[], "x", None, 3]
    for value in values:
        assert fails(parse, value).code == CloudCode.BAD_REQUEST
    assert fails(parse_update, [], "mix").code == CloudCode.BAD_REQUEST


@given(st.binary(max_size=200))
@settings(max_examples=200)
def test_parse_json_answers_any_bytes_with_a_dict_or_code_8(raw: bytes) -> None:
    try:
        assert isinstance(parse_json(raw), dict)
    except CloudError as exc:
        assert exc.code == CloudCode.BAD_REQUEST


# --- cname, uid, mode ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cname", "words"),
    [
        (None, "required"),
        (12, "string"),
        ("", "1 to 64"),
        ("c" * 65, "1 to 64"),
        ("a/b", "character"),
        ("naïve", "character"),
    ],
)
def test_bad_cname_is_1013(cname: Any, words: str) -> None:
    b = seed()
    b["cname"] = cname
    for parse in (parse_acquire, parse_stop, parse_update_layout):
        assert_fault(fails(parse, b), CloudCode.CNAME_INVALID, "cname", words)
    assert_fault(fails(parse_start, b, "mix"), CloudCode.CNAME_INVALID, "cname", words)


def test_cname_takes_the_vendors_character_set() -> None:
    b = seed()
    b["cname"] = "A z0!#$%&()+-:;<=.>?@[]^_{|}~," + "x" * 34
    assert parse_start(b, "individual").cname == b["cname"]


@pytest.mark.parametrize(
    ("uid", "words"),
    [
        (None, "required"),
        (527841, "must be a string"),
        ("", "digits"),
        ("12a", "digits"),
        ("-5", "digits"),
        ("\u0661\u0662", "digits"),  # Arabic-Indic digits: decimal to Python, not to the API
        ("0", "cannot be 0"),
        ("0123", "leading zeros"),
        ("4294967296", "4294967295"),
    ],
)
def test_bad_recorder_uid_is_code_2_saying_why(uid: Any, words: str) -> None:
    b = seed()
    b["uid"] = uid
    for parse in (parse_acquire, parse_stop, parse_update_layout):
        assert_fault(fails(parse, b), CloudCode.INVALID_PARAMETER, "uid", words)
    start_fault(b, "uid", words)


@given(st.integers(1, 2**32 - 1))
def test_every_uid_from_1_to_2_pow_32_minus_1_is_taken(n: int) -> None:
    assert parse_stop({"cname": "c", "uid": str(n)}).uid == str(n)


@given(st.integers(2**32, 2**70))
def test_uids_past_2_pow_32_minus_1_are_refused(n: int) -> None:
    assert fails(parse_stop, {"cname": "c", "uid": str(n)}).field == "uid"


def test_web_mode_answers_that_it_is_not_supported_yet() -> None:
    err = fails(parse_start, seed(), "web")
    assert_fault(err, CloudCode.INVALID_PARAMETER, "mode", "not supported yet")
    assert_fault(fails(parse_start, seed(), "composite"), 2, "mode", "individual, mix or web")


# --- clientRequest, storageConfig, token ---------------------------------------------------


def test_client_request_storage_and_recording_config_are_required() -> None:
    b = seed()
    del b["clientRequest"]
    start_fault(b, "clientRequest", "required")
    start_fault(body(drop=("storageConfig",)), "clientRequest.storageConfig", "required")
    start_fault(body(drop=("recordingConfig",)), RC, "required")
    start_fault(body(recordingConfig=[1]), RC, "must be an object")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"vendor": 4}, "vendor"),
        ({"region": 99}, "region"),
        ({"bucket": "Bad_Bucket"}, "bucket"),
        ({"secretKey": ""}, "secretKey"),
        ({"fileNamePrefix": ["dir/1"]}, "fileNamePrefix"),
        ({"extensionParams": {"sse": "des"}}, "extensionParams.sse"),
    ],
)
def test_storage_config_faults_are_code_2_with_the_full_path(
    changes: dict[str, Any], field: str
) -> None:
    b = seed()
    b["clientRequest"]["storageConfig"].update(changes)
    start_fault(b, f"clientRequest.storageConfig.{field}")


def test_token_is_an_optional_string() -> None:
    b = seed()
    b["clientRequest"]["token"] = 5
    start_fault(b, "clientRequest.token", "string")
    b["clientRequest"]["token"] = "t" * 2049
    start_fault(b, "clientRequest.token", "2048")
    b["clientRequest"]["token"] = ""
    assert parse_start(b, "individual").config.token is None


def test_extension_service_config_is_not_supported_yet() -> None:
    b = body(extensionServiceConfig={"extensionServices": []})
    start_fault(b, "clientRequest.extensionServiceConfig", "not supported yet")
    start_fault(b, "clientRequest.extensionServiceConfig", "web", mode="mix")


# --- recordingConfig: ranges -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "bad", "good"),
    [
        ("channelType", 2, 1),
        ("streamTypes", 3, 0),
        ("videoStreamType", 2, 1),
        ("decryptionMode", 9, 0),
        ("maxIdleTime", 4, 5),
        ("maxIdleTime", 2592001, 2592000),
        ("subscribeUidGroup", 6, 5),
        ("audioProfile", 3, 0),
    ],
)
def test_integer_ranges(name: str, bad: int, good: int) -> None:
    lists = {"subscribeAudioUids": None, "subscribeVideoUids": None}
    start_fault(rec(**{name: bad}, **lists), f"{RC}.{name}", "must be")
    parse_start(rec(**{name: good}, **lists), "individual")


def test_max_idle_time_reason_gives_the_range() -> None:
    err = fails(parse_start, rec(maxIdleTime=3), "individual")
    assert err.reason == f"{RC}.maxIdleTime: must be 5..2592000, got 3"


@pytest.mark.parametrize("value", ["30", True, 30.5, [30], {"s": 30}])
def test_integers_must_be_json_integers(value: Any) -> None:
    start_fault(rec(maxIdleTime=value), f"{RC}.maxIdleTime")


def test_integral_float_and_null_are_taken() -> None:
    assert parse_start(rec(maxIdleTime=60.0), "mix").config.recording.max_idle_time_s == 60
    assert parse_start(rec(maxIdleTime=None), "mix").config.recording.max_idle_time_s == 30


# JSON numbers Python cannot hold as a float: 1e400 parses as an infinite float, and an
# integer of 400 digits has no float at all; each must be that field's code 2, not a crash
HUGE_NUMBERS = ["1e400", "-1e400", "1" + "0" * 400]


@pytest.mark.parametrize("number", HUGE_NUMBERS)
@pytest.mark.parametrize(
    ("path", "mode"),
    [
        ("storageConfig.vendor", "individual"),
        ("storageConfig.region", "individual"),
        ("storageConfig.stsExpiration", "individual"),
        ("recordingConfig.maxIdleTime", "individual"),
        ("recordingConfig.audioProfile", "mix"),
        ("recordingConfig.transcodingConfig.width", "mix"),
        ("recordingConfig.transcodingConfig.fps", "mix"),
        ("recordingConfig.transcodingConfig.bitrate", "mix"),
        ("recordingConfig.transcodingConfig.mixedVideoLayout", "mix"),
        ("recordingConfig.transcodingConfig.layoutConfig[0].alpha", "mix"),
        ("snapshotConfig.captureInterval", "individual"),
    ],
)
def test_numbers_out_of_every_range_are_code_2_naming_the_field(
    number: str, path: str, mode: str
) -> None:
    marker = 12345.678  # written at the path, then replaced by the raw number in the JSON text
    changes: dict[str, Any] = {}
    if "layoutConfig" in path:
        region = {"x_axis": 0, "y_axis": 0, "width": 1, "height": 1, "alpha": marker}
        changes["recordingConfig.transcodingConfig.mixedVideoLayout"] = 3
        changes["recordingConfig.transcodingConfig.layoutConfig"] = [region]
    else:
        changes[path] = marker
    if path.startswith("storageConfig.sts"):
        changes["storageConfig.vendor"] = 1  # (a vendor that takes STS credentials)
        changes["storageConfig.stsToken"] = "token"
    if path.startswith("snapshotConfig"):
        changes["recordingFileConfig.avFileType"] = ["hls"]
        changes["snapshotConfig.fileType"] = ["jpg"]
    raw = json.dumps(body(**changes)).replace(repr(marker), number)
    assert number in raw
    start_fault(parse_json(raw.encode()), f"clientRequest.{path}", mode=mode)


@pytest.mark.parametrize("uid", ["007", "\u0661\u0662", "04294967295"])
def test_max_resolution_uid_is_ascii_digits_without_leading_zeros(uid: str) -> None:
    raw = json.dumps(
        rec(transcodingConfig={"mixedVideoLayout": 2, "maxResolutionUid": "UID"})
    ).replace('"UID"', f'"{uid}"')
    start_fault(parse_json(raw.encode()), f"{TC}.maxResolutionUid", "leading zeros", mode="mix")


@given(st.integers(-(2**40), 2**40))
def test_max_idle_time_is_taken_exactly_in_5_to_2592000(n: int) -> None:
    try:
        start = parse_start(rec(maxIdleTime=n), "individual")
    except CloudError as exc:
        assert not 5 <= n <= 2592000
        assert exc.field == f"{RC}.maxIdleTime"
    else:
        assert 5 <= n <= 2592000 and start.config.recording.max_idle_time_s == n


# --- recordingConfig: decryption ---------------------------------------------------------


def test_decryption_needs_a_secret_and_gcm2_a_32_byte_salt() -> None:
    start_fault(rec(decryptionMode=1), f"{RC}.secret", "required when decryptionMode is 1")
    r = parse_start(rec(decryptionMode=5, secret="k"), "individual").config.recording
    assert (r.decryption_mode, r.secret, r.salt) == (DecryptionMode.AES_128_GCM, "k", None)
    start_fault(rec(decryptionMode=7, secret="k"), f"{RC}.salt", "required")
    start_fault(rec(decryptionMode=8, secret="k", salt="not base64!"), f"{RC}.salt", "Base64")
    short = base64.b64encode(b"x" * 16).decode()
    start_fault(rec(decryptionMode=8, secret="k", salt=short), f"{RC}.salt", "32 bytes")
    r = parse_start(rec(decryptionMode=8, secret="k", salt=SALT), "individual").config.recording
    assert (r.decryption_mode, r.salt) == (DecryptionMode.AES_256_GCM2, SALT)


def test_a_key_without_its_mode_is_refused() -> None:
    start_fault(rec(secret="k"), f"{RC}.secret", "decryptionMode is 0")
    start_fault(rec(decryptionMode=0, salt=SALT), f"{RC}.salt", "decryptionMode is 0")
    start_fault(rec(decryptionMode=2, secret="k", salt=SALT), f"{RC}.salt", "7 or 8")


# --- recordingConfig: subscription lists -------------------------------------------------


@pytest.mark.parametrize("kind", ["Audio", "Video"])
def test_subscribe_and_unsubscribe_of_one_kind_cannot_be_set_together(kind: str) -> None:
    for unsub in (f"unsubscribe{kind}Uids", f"unSubscribe{kind}Uids"):
        b = rec(**{f"subscribe{kind}Uids": ["1"], unsub: ["2"]})
        start_fault(b, f"{RC}.subscribe{kind}Uids", f"cannot be set together with {unsub}")
    both = rec(**{f"unsubscribe{kind}Uids": ["1"], f"unSubscribe{kind}Uids": ["2"]})
    both["clientRequest"]["recordingConfig"].pop(f"subscribe{kind}Uids")
    start_fault(both, f"{RC}.unSubscribe{kind}Uids", "cannot be set together")


@pytest.mark.parametrize(
    "name",
    ["subscribeAudioUids", "unsubscribeAudioUids", "subscribeVideoUids", "unSubscribeVideoUids"],
)
def test_lists_hold_at_most_32_uids(name: str) -> None:
    uids = [str(i) for i in range(1, 34)]
    b = rec(subscribeAudioUids=None, subscribeVideoUids=None, subscribeUidGroup=5)
    b["clientRequest"]["recordingConfig"][name] = uids
    start_fault(b, f"{RC}.{name}", "cannot exceed 32")
    b["clientRequest"]["recordingConfig"][name] = uids[:32]
    parse_start(b, "individual")


def test_allstream_subscribes_everyone_and_must_be_alone() -> None:
    r = parse_start(rec(subscribeAudioUids=["#allstream#"]), "individual").config.recording
    assert r.audio_filter == EVERYONE and r.audio_filter.admits("anyone")
    b = rec(subscribeVideoUids=["#allstream#", "123"])
    start_fault(b, f"{RC}.subscribeVideoUids", "alone")
    b = rec(subscribeAudioUids=None, unsubscribeAudioUids=["#allstream#"])
    start_fault(b, f"{RC}.unsubscribeAudioUids", "subscribe lists only")


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        ("123", "", "array"),
        ([123], "[0]", "string"),
        (["1", "1"], "[1]", "twice"),
        (["ok", "no spaces"], "[1]", "not a user id"),
        ([""], "[0]", "not a user id"),
    ],
)
def test_list_entries_are_distinct_uid_strings(value: Any, field: str, words: str) -> None:
    start_fault(rec(subscribeAudioUids=value), f"{RC}.subscribeAudioUids{field}", words)


def test_subscribe_lists_must_fit_stream_types() -> None:
    start_fault(rec(streamTypes=1), f"{RC}.subscribeAudioUids", "streamTypes is 0 or 2")
    start_fault(rec(streamTypes=0), f"{RC}.subscribeVideoUids", "streamTypes is 1 or 2")
    r = parse_start(rec(streamTypes=0, subscribeVideoUids=None), "individual").config.recording
    assert r.video_filter == NOBODY and r.audio_filter == UidFilter(frozenset({"123", "456"}))


def test_a_list_for_one_kind_only_drops_the_other_kind() -> None:
    r = parse_start(rec(subscribeVideoUids=None), "individual").config.recording
    assert r.video_filter.nobody and r.audio_filter.admits("123")
    # An unsubscribe list says "everyone but": the other kind stays subscribed.
    b = rec(subscribeAudioUids=None, subscribeVideoUids=None, unsubscribeAudioUids=["9"])
    r = parse_start(b, "individual").config.recording
    assert not r.audio_filter.admits("9") and r.audio_filter.admits("10")
    assert r.video_filter == EVERYONE


def test_subscribe_uid_group_is_required_in_individual_and_bounds_the_named_uids() -> None:
    start_fault(rec(subscribeUidGroup=None), f"{RC}.subscribeUidGroup", "required in individual")
    # The seed's own example: video 100-102 and audio 101-103 are 4 subscribers.
    b = rec(subscribeVideoUids=["100", "101", "102"], subscribeAudioUids=["101", "102", "103"])
    start_fault(b, f"{RC}.subscribeUidGroup", "up to 2 uids", "name 4")
    b["clientRequest"]["recordingConfig"]["subscribeUidGroup"] = 1
    assert parse_start(b, "individual").config.recording.subscribe_uid_group == 1


# --- recordingConfig: modes ----------------------------------------------------------------


def test_stream_mode_values_and_individual_only() -> None:
    start_fault(rec(streamMode="raw"), f"{RC}.streamMode", "default, standard or original")
    for value in StreamMode:
        assert (
            parse_start(rec(streamMode=value.value), "individual").config.recording.stream_mode
            == value
        )
    start_fault(rec(streamMode="standard"), f"{RC}.streamMode", "individual", mode="mix")


def test_audio_profile_and_transcoding_config_are_mix_only() -> None:
    start_fault(rec(audioProfile=2), f"{RC}.audioProfile", "mix mode")
    start_fault(rec(transcodingConfig={}), f"{TC}", "mix mode")
    mix = parse_start(rec(audioProfile=2), "mix").config.mix
    assert mix is not None and mix.audio_profile is AudioProfile.STEREO_192K


@pytest.mark.parametrize(
    ("transcoding", "field", "words"),
    [
        ({"width": 1920, "height": 1088}, "width", "1920 x 1080"),
        ({"width": 0}, "width", ""),
        ({"fps": 0}, "fps", ""),
        ({"bitrate": "500"}, "bitrate", "number"),
        ({"mixedVideoLayout": 4}, "mixedVideoLayout", ""),
        ({"mixedVideoLayout": 2}, "maxResolutionUid", "required"),
        ({"mixedVideoLayout": 2, "maxResolutionUid": "0"}, "maxResolutionUid", ""),
        ({"mixedVideoLayout": 3}, "layoutConfig", "required"),
        ({"backgroundColor": "red"}, "backgroundColor", "#FF0000"),
        ({"backgroundImage": "ftp://x/y.jpg"}, "backgroundImage", "URL"),
        ({"backgroundConfig": [{"image_url": "https://x/y.jpg"}]}, "backgroundConfig[0].uid", ""),
    ],
)
def test_transcoding_config_faults_name_their_field(
    transcoding: dict[str, Any], field: str, words: str
) -> None:
    start_fault(rec(transcodingConfig=transcoding), f"{TC}.{field}", words, mode="mix")


def test_custom_layout_regions_are_checked_one_by_one() -> None:
    region = {"x_axis": 0.1, "y_axis": 0.1, "width": 0.5, "height": 0.5}
    good = rec(transcodingConfig={"mixedVideoLayout": 3, "layoutConfig": [region]})
    mix = parse_start(good, "mix").config.mix
    assert mix is not None and mix.layout.mode is LayoutMode.CUSTOM
    assert (
        mix.layout.regions[0].alpha == 1.0 and mix.layout.regions[0].render_mode is RenderMode.CROP
    )
    bad = {**region, "x_axis": 1.5}
    b = rec(transcodingConfig={"mixedVideoLayout": 3, "layoutConfig": [region, bad]})
    start_fault(b, f"{TC}.layoutConfig[1].x_axis", "[0, 1]", mode="mix")
    b = rec(transcodingConfig={"mixedVideoLayout": 3, "layoutConfig": [region] * 18})
    start_fault(b, f"{TC}.layoutConfig", "17", mode="mix")


def test_full_hd_mix_is_taken() -> None:
    b = rec(transcodingConfig={"width": 1920, "height": 1080, "fps": 30, "bitrate": 4000})
    mix = parse_start(b, "mix").config.mix
    assert mix is not None and (mix.width, mix.height, mix.fps) == (1920, 1080, 30)


# --- recordingFileConfig -------------------------------------------------------------------


def test_av_file_type_rules_per_mode() -> None:
    at = "clientRequest.recordingFileConfig.avFileType"
    for mode in ("individual", "mix"):
        start_fault(body(recordingFileConfig__avFileType=["mp4"]), at, '["mp4"] alone', mode=mode)
        start_fault(body(recordingFileConfig__avFileType=[]), at, "empty", mode=mode)
        b = body(recordingFileConfig__avFileType=["hls", "hls"])
        start_fault(b, f"{at}[1]", "twice", mode=mode)
        start_fault(body(recordingFileConfig__avFileType=["flv"]), f"{at}[0]", "hls", mode=mode)
    b = body(recordingFileConfig__avFileType=["hls", "mp4"])
    start_fault(b, at, 'individual mode records ["hls"] only')
    start = parse_start(body(recordingFileConfig__avFileType=["mp4", "hls"]), "mix")
    assert start.config.recording_file == RecordingFileConfig((FileType.HLS, FileType.MP4))
    assert start.config.recording_file.mp4
    assert start.config.mix is not None
    assert start.config.mix.file_types == {FileType.HLS, FileType.MP4}
    assert parse_start(body(recordingFileConfig={}), "mix").config.recording_file == (
        RecordingFileConfig()
    )


# --- snapshotConfig ------------------------------------------------------------------------


def test_snapshots_only_and_with_recording() -> None:
    b = body(snapshotConfig={"fileType": ["jpg"]}, drop=("recordingFileConfig",))
    start = parse_start(b, "individual")
    assert start.snapshots_only and start.config.recording_file is None
    assert start.config.snapshot is not None
    assert start.config.snapshot.capture_interval_s == 10
    assert start.config.snapshot.file_types == ("jpg",)
    start = parse_start(
        body(snapshotConfig={"fileType": ["jpg"], "captureInterval": 3600}), "individual"
    )
    assert not start.snapshots_only and start.config.snapshot is not None
    assert start.config.snapshot.capture_interval_s == 3600


def test_snapshot_config_rules() -> None:
    at = "clientRequest.snapshotConfig"
    for interval in (4, 3601):
        b = body(snapshotConfig={"fileType": ["jpg"], "captureInterval": interval})
        start_fault(b, f"{at}.captureInterval", "5..3600")
    start_fault(body(snapshotConfig={}), f"{at}.fileType", "required")
    start_fault(body(snapshotConfig={"fileType": ["png"]}), f"{at}.fileType", '["jpg"]')
    start_fault(body(snapshotConfig={"fileType": ["jpg", "jpg"]}), f"{at}.fileType", '["jpg"]')
    snap = {"fileType": ["jpg"]}
    b = body(snapshotConfig=snap, recordingConfig__streamTypes=0)
    b["clientRequest"]["recordingConfig"].pop("subscribeVideoUids")
    start_fault(b, at, "streamTypes 1 or 2")
    b = body(snapshotConfig=snap)
    b["clientRequest"]["recordingConfig"].pop("subscribeVideoUids")
    start_fault(b, f"{RC}.subscribeVideoUids", "required with snapshotConfig")
    start_fault(body(snapshotConfig=snap), at, "individual", mode="mix")
