"""The cloud recording API's request bodies past start (issue 8, seed 001): acquire and its
startParameter, stop, update, updateLayout; and any JSON in any field answered with a request or
the vendor's error. The start body's own rules are in ``test_cloud_recording_schema``.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cloud_recording_schema import (
    RC,
    TC,
    assert_fault,
    body,
    fails,
    rec,
    seed,
)

from api.cloud_recording_schema import (
    EVERYONE,
    AcquireRequest,
    CloudCode,
    CloudError,
    RecordingMode,
    Scene,
    StartRequest,
    UidFilter,
    UidLists,
    check_start_matches_acquire,
    parse_acquire,
    parse_start,
    parse_stop,
    parse_update,
    parse_update_layout,
)
from mixer.layout import LayoutMode, RenderMode

# --- acquire and its startParameter ------------------------------------------------------


def test_acquire_defaults_and_ranges() -> None:
    acq = parse_acquire({"cname": "c", "uid": "1", "clientRequest": {}})
    assert acq == AcquireRequest("c", "1", 72, Scene.REALTIME, None)
    assert parse_acquire({"cname": "c", "uid": "1"}).resource_expired_hour == 72
    for hours in (0, 721, 1.5):
        err = fails(
            parse_acquire,
            {"cname": "c", "uid": "1", "clientRequest": {"resourceExpiredHour": hours}},
        )
        assert_fault(err, 2, "clientRequest.resourceExpiredHour")
    ok = {"cname": "c", "uid": "1", "clientRequest": {"resourceExpiredHour": 720, "scene": 2}}
    assert parse_acquire(ok).scene is Scene.DELAYED_TRANSCODING
    err = fails(parse_acquire, {"cname": "c", "uid": "1", "clientRequest": {"scene": 3}})
    assert_fault(err, 2, "clientRequest.scene", "0..2")
    err = fails(parse_acquire, {"cname": "c", "uid": "1", "clientRequest": {"scene": 1}})
    assert_fault(err, 2, "clientRequest.scene", "not supported yet")


def test_acquire_checks_the_start_parameters_storage_config() -> None:
    sp = seed()["clientRequest"]
    acq = parse_acquire({"cname": "c", "uid": "1", "clientRequest": {"startParameter": sp}})
    assert acq.start_parameter == sp
    err = fails(parse_acquire, {"cname": "c", "uid": "1", "clientRequest": {"startParameter": 5}})
    assert_fault(err, 2, "clientRequest.startParameter", "object")
    bad = copy.deepcopy(sp)
    bad["storageConfig"]["bucket"] = "X"
    err = fails(parse_acquire, {"cname": "c", "uid": "1", "clientRequest": {"startParameter": bad}})
    assert_fault(err, 2, "clientRequest.startParameter.storageConfig.bucket")


def acquire_for(start_body: dict[str, Any], scene: int = 0, **sp: Any) -> AcquireRequest:
    client: dict[str, Any] = {"scene": scene}
    if sp:
        client["startParameter"] = sp
    return parse_acquire(
        {"cname": start_body["cname"], "uid": start_body["uid"], "clientRequest": client}
    )


def differs(acq: AcquireRequest, start: StartRequest, field: str) -> None:
    err = fails(check_start_matches_acquire, acq, start)
    assert_fault(err, CloudCode.PARAMETERS_DIFFER, field)


def test_start_matches_its_acquire() -> None:
    b = seed()
    start = parse_start(b, "individual")
    check_start_matches_acquire(acquire_for(b), start)
    check_start_matches_acquire(acquire_for(b, **b["clientRequest"]), start)
    check_start_matches_acquire(acquire_for(b, scene=2), start)
    # Defaults count on both sides, the token is not compared, a left-out section is not.
    same = copy.deepcopy(b["clientRequest"]["recordingConfig"])
    same.pop("maxIdleTime")
    same.pop("streamMode")
    b2 = seed()
    b2["clientRequest"]["token"] = "new token"
    check_start_matches_acquire(acquire_for(b, recordingConfig=same), parse_start(b2, "individual"))


def test_start_differing_from_acquire_is_432_naming_the_field() -> None:
    b = seed()
    start = parse_start(b, "individual")
    other = acquire_for({**b, "cname": "elsewhere"})
    differs(other, start, "cname")
    differs(acquire_for({**b, "uid": "1"}), start, "uid")
    mix = parse_start(rec(subscribeUidGroup=None), "mix")
    differs(acquire_for(b, scene=2), mix, "mode")
    rc = {**b["clientRequest"]["recordingConfig"], "maxIdleTime": 60}
    differs(acquire_for(b, recordingConfig=rc), start, f"{RC}.maxIdleTime")
    rc = {**b["clientRequest"]["recordingConfig"], "subscribeAudioUids": ["123"]}
    differs(acquire_for(b, recordingConfig=rc), start, f"{RC}.subscribeAudioUids")
    storage = {**b["clientRequest"]["storageConfig"], "bucket": "other-bucket"}
    differs(acquire_for(b, storageConfig=storage), start, "clientRequest.storageConfig.bucket")
    files = {"avFileType": ["hls", "mp4"]}
    mix_mp4 = parse_start(
        body(recordingFileConfig=files, recordingConfig__subscribeUidGroup=1), "mix"
    )
    differs(
        acquire_for(b, recordingFileConfig={}),
        mix_mp4,
        "clientRequest.recordingFileConfig.avFileType",
    )
    snap = {"fileType": ["jpg"]}
    differs(acquire_for(b, snapshotConfig=snap), start, "clientRequest.snapshotConfig")


def test_start_parameter_transcoding_differs() -> None:
    b = rec(transcodingConfig={"width": 640, "height": 360})
    start = parse_start(b, "mix")
    sp_rc = {
        **b["clientRequest"]["recordingConfig"],
        "transcodingConfig": {"width": 640, "height": 360},
    }
    check_start_matches_acquire(acquire_for(b, recordingConfig=sp_rc), start)
    sp_rc["transcodingConfig"] = {"width": 1280, "height": 720}
    differs(acquire_for(b, recordingConfig=sp_rc), start, f"{TC}.width")


def test_start_parameter_not_valid_for_the_mode_is_432() -> None:
    b = rec(subscribeUidGroup=None)
    start = parse_start(b, "mix")
    acq = acquire_for(b, recordingConfig={"streamMode": "original"})
    err = fails(check_start_matches_acquire, acq, start)
    assert err.code == CloudCode.PARAMETERS_DIFFER
    assert err.field == "clientRequest.startParameter.recordingConfig.streamMode"
    assert "not valid for mix mode" in err.reason


# --- stop ----------------------------------------------------------------------------------


def test_stop() -> None:
    assert not parse_stop({"cname": "c", "uid": "7", "clientRequest": {}}).async_stop
    assert not parse_stop({"cname": "c", "uid": "7"}).async_stop
    assert parse_stop({"cname": "c", "uid": "7", "clientRequest": {"async_stop": True}}).async_stop
    for value in ("true", 1):
        err = fails(parse_stop, {"cname": "c", "uid": "7", "clientRequest": {"async_stop": value}})
        assert_fault(err, 2, "clientRequest.async_stop", "true or false")
    err = fails(parse_stop, {"cname": "c", "uid": "7", "clientRequest": []})
    assert_fault(err, 2, "clientRequest", "object")


# --- update ----------------------------------------------------------------------------------


def update_body(**client: Any) -> dict[str, Any]:
    return {"cname": "c", "uid": "7", "clientRequest": client}


def test_update_subscription_lists_both_spellings() -> None:
    u = parse_update(
        update_body(
            streamSubscribe={
                "audioUidList": {"subscribeAudioUids": ["#allstream#"]},
                "videoUidList": {"unSubscribeVideoUids": ["444", "555"]},
            }
        ),
        "individual",
    )
    assert u.audio == UidLists(subscribe=("#allstream#",))
    assert u.video == UidLists(unsubscribe=("444", "555"))
    u = parse_update(
        update_body(streamSubscribe={"audioUidList": {"unsubscribeAudioUids": ["1"]}}), "mix"
    )
    assert u.video is None and u.audio == UidLists(unsubscribe=("1",))


def test_update_rules() -> None:
    sub = "clientRequest.streamSubscribe"
    both = {"audioUidList": {"subscribeAudioUids": ["1"], "unSubscribeAudioUids": ["2"]}}
    err = fails(parse_update, update_body(streamSubscribe=both), "mix")
    assert_fault(err, 2, f"{sub}.audioUidList.subscribeAudioUids", "cannot be set together")
    many = {"videoUidList": {"subscribeVideoUids": [str(i) for i in range(1, 34)]}}
    err = fails(parse_update, update_body(streamSubscribe=many), "individual")
    assert_fault(err, 2, f"{sub}.videoUidList.subscribeVideoUids", "32")
    err = fails(parse_update, update_body(streamSubscribe={"audioUidList": {}}), "individual")
    assert_fault(err, 2, f"{sub}.audioUidList", "subscribeAudioUids")
    assert_fault(fails(parse_update, update_body(streamSubscribe={}), "mix"), 2, sub)
    assert_fault(fails(parse_update, update_body(), "mix"), 2, "clientRequest", "nothing")
    err = fails(parse_update, update_body(webRecordingConfig={"onhold": True}), "mix")
    assert_fault(err, 2, "clientRequest.webRecordingConfig", "web mode")
    err = fails(parse_update, update_body(rtmpPublishConfig={"outputs": []}), "individual")
    assert_fault(err, 2, "clientRequest.rtmpPublishConfig", "web mode")


def test_update_in_web_mode_reads_onhold_and_outputs() -> None:
    out = {"outputs": [{"rtmpUrl": "rtmp://cdn.example.com/live/key"}]}
    u = parse_update(update_body(webRecordingConfig={"onhold": True}, rtmpPublishConfig=out), "web")
    assert u.onhold is True and u.rtmp_outputs == ("rtmp://cdn.example.com/live/key",)
    bad = {"outputs": [{"rtmpUrl": "http://cdn/live"}]}
    err = fails(parse_update, update_body(rtmpPublishConfig=bad), "web")
    assert_fault(err, 2, "clientRequest.rtmpPublishConfig.outputs[0].rtmpUrl", "rtmp://")
    err = fails(parse_update, update_body(webRecordingConfig={"onhold": "yes"}), "web")
    assert_fault(err, 2, "clientRequest.webRecordingConfig.onhold")
    err = fails(parse_update, update_body(streamSubscribe={}), "web")
    assert_fault(err, 2, "clientRequest.streamSubscribe", "individual and mix")


def subscribe_update(kind: str, **lists: list[str]) -> Any:
    return parse_update(update_body(streamSubscribe={f"{kind}UidList": lists}), "individual")


def test_update_applies_to_a_running_recording() -> None:
    config = parse_start(seed(), "individual").config
    after = subscribe_update("video", subscribeVideoUids=["456"]).apply_to(config)
    assert after.recording.video_filter == UidFilter(frozenset({"456"}))
    assert after.recording.audio_uids == config.recording.audio_uids
    assert after.storage == config.storage
    audio_only = parse_start(rec(streamTypes=0, subscribeVideoUids=None), "individual").config
    err = fails(subscribe_update("video", subscribeVideoUids=["9"]).apply_to, audio_only)
    assert_fault(err, 2, "clientRequest.streamSubscribe.videoUidList", "no video")


def test_update_keeps_the_kind_it_leaves_out() -> None:
    # No lists at start: everyone's audio and video. Changing video leaves audio as it was.
    everyone = parse_start(rec(subscribeAudioUids=None, subscribeVideoUids=None), "individual")
    after = subscribe_update("video", subscribeVideoUids=["9"]).apply_to(everyone.config)
    assert after.recording.audio_filter == EVERYONE
    # Audio list only at start: no video. Turning audio into an unsubscribe list keeps no video.
    audio_only = parse_start(rec(subscribeVideoUids=None), "individual")
    after = subscribe_update("audio", unsubscribeAudioUids=["1"]).apply_to(audio_only.config)
    assert after.recording.video_filter.nobody and not after.recording.audio_filter.admits("1")


def test_update_keeps_the_start_group_and_snapshot_rules() -> None:
    config = parse_start(seed(), "individual").config  # subscribeUidGroup 0: up to 2 uids
    err = fails(subscribe_update("audio", subscribeAudioUids=["1", "2", "3"]).apply_to, config)
    assert_fault(err, 2, "clientRequest.streamSubscribe", "subscribeUidGroup 0")
    snap = parse_start(body(snapshotConfig={"fileType": ["jpg"]}), "individual").config
    video_all = subscribe_update("video", unsubscribeVideoUids=["5"])
    err = fails(video_all.apply_to, snap)
    assert_fault(err, 2, "clientRequest.streamSubscribe.videoUidList", "snapshots")


# --- updateLayout ----------------------------------------------------------------------------


def test_update_layout_defaults_what_is_left_out() -> None:
    lay = parse_update_layout({"cname": "c", "uid": "7", "clientRequest": {}})
    assert lay.layout.mode is LayoutMode.FLOATING and lay.layout.regions == ()
    assert (lay.background_color, lay.background_image, lay.user_backgrounds) == (
        "#000000",
        None,
        (),
    )
    lay = parse_update_layout(
        {
            "cname": "c",
            "uid": "7",
            "clientRequest": {
                "mixedVideoLayout": 2,
                "maxResolutionUid": "42",
                "backgroundColor": "#ff0000",
                "backgroundImage": "https://img.example.com/bg.jpg",
                "defaultUserBackgroundImage": "https://img.example.com/user.jpg",
                "backgroundConfig": [
                    {"uid": "5", "image_url": "https://x/5.jpg", "render_mode": 1}
                ],
                "width": 99999,  # not an updateLayout field: the canvas keeps its size
            },
        }
    )
    assert lay.layout.mode is LayoutMode.VERTICAL and lay.layout.max_resolution_uid == "42"
    assert lay.background_color == "#FF0000"
    assert lay.default_user_background_image == "https://img.example.com/user.jpg"
    assert lay.user_backgrounds[0].uid == "5"
    assert lay.user_backgrounds[0].render_mode is RenderMode.FIT


@pytest.mark.parametrize(
    ("client", "field"),
    [
        ({"mixedVideoLayout": 4}, "mixedVideoLayout"),
        ({"mixedVideoLayout": 2}, "maxResolutionUid"),
        ({"mixedVideoLayout": 3}, "layoutConfig"),
        ({"mixedVideoLayout": 3, "layoutConfig": [{"x_axis": 2}]}, "layoutConfig[0].x_axis"),
        ({"backgroundColor": "#12345"}, "backgroundColor"),
        ({"backgroundConfig": [{"uid": "1"}]}, "backgroundConfig[0].image_url"),
        ({"backgroundImage": 5}, "backgroundImage"),
    ],
)
def test_bad_update_layout_is_1028_naming_the_field(client: dict[str, Any], field: str) -> None:
    err = fails(parse_update_layout, {"cname": "c", "uid": "7", "clientRequest": client})
    assert_fault(err, CloudCode.LAYOUT_INVALID, f"clientRequest.{field}")


def test_update_layout_without_client_request_is_1028() -> None:
    err = fails(parse_update_layout, {"cname": "c", "uid": "7"})
    assert_fault(err, CloudCode.LAYOUT_INVALID, "clientRequest", "required")


# --- robustness: any JSON in any field is answered with a CloudError ------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
RECORDING_FIELDS = [
    "channelType",
    "streamTypes",
    "decryptionMode",
    "secret",
    "salt",
    "maxIdleTime",
    "videoStreamType",
    "subscribeAudioUids",
    "unsubscribeAudioUids",
    "subscribeVideoUids",
    "unSubscribeVideoUids",
    "subscribeUidGroup",
    "streamMode",
    "audioProfile",
    "transcodingConfig",
]
TRANSCODING_FIELDS = [
    "width",
    "height",
    "fps",
    "bitrate",
    "maxResolutionUid",
    "mixedVideoLayout",
    "backgroundColor",
    "backgroundImage",
    "defaultUserBackgroundImage",
    "layoutConfig",
    "backgroundConfig",
]


@given(
    st.sampled_from(["individual", "mix"]),
    st.dictionaries(st.sampled_from(RECORDING_FIELDS), JSON_VALUES, max_size=4),
    st.dictionaries(
        st.sampled_from(["recordingFileConfig", "snapshotConfig", "token"]), JSON_VALUES, max_size=2
    ),
)
@settings(max_examples=300, deadline=None)
def test_start_answers_any_json_with_a_request_or_a_cloud_error(
    mode: str, recording: dict[str, Any], client: dict[str, Any]
) -> None:
    b = seed()
    b["clientRequest"]["recordingConfig"].update(recording)
    b["clientRequest"].update(client)
    try:
        assert isinstance(parse_start(b, mode), StartRequest)
    except CloudError as exc:
        assert exc.code == CloudCode.INVALID_PARAMETER and exc.field
        assert exc.reason.startswith(exc.field)


@given(st.dictionaries(st.sampled_from(TRANSCODING_FIELDS), JSON_VALUES, max_size=4))
@settings(max_examples=300, deadline=None)
def test_layouts_answer_any_json_with_a_request_or_a_cloud_error(fields: dict[str, Any]) -> None:
    try:
        parse_start(rec(transcodingConfig=fields), "mix")
    except CloudError as exc:
        assert exc.code == CloudCode.INVALID_PARAMETER and exc.field and exc.field.startswith(TC)
    try:
        parse_update_layout({"cname": "c", "uid": "7", "clientRequest": fields})
    except CloudError as exc:
        assert exc.code == CloudCode.LAYOUT_INVALID and exc.field
        assert exc.field.startswith("clientRequest.") and "transcodingConfig" not in exc.field


@given(st.lists(st.integers(1, 10**6).map(str), unique=True, max_size=40))
def test_a_subscribe_list_is_taken_iff_it_has_at_most_32_uids(uids: list[str]) -> None:
    b = rec(subscribeAudioUids=uids, subscribeVideoUids=None, subscribeUidGroup=4)
    try:
        r = parse_start(b, "individual").config.recording
    except CloudError as exc:
        assert len(uids) > 32 and exc.field == f"{RC}.subscribeAudioUids"
    else:
        assert len(uids) <= 32
        assert all(r.audio_filter.admits(u) for u in uids) and r.video_filter.nobody


def test_mode_enum_values() -> None:
    assert [m.value for m in RecordingMode] == ["individual", "mix", "web"]


def test_update_renews_storage_credentials_only() -> None:
    config = parse_start(seed(), "individual").config
    fresh = {**seed()["clientRequest"]["storageConfig"], "accessKey": "AK2", "secretKey": "SK2"}
    u = parse_update(update_body(storageConfig=fresh), "mix")
    assert u.storage is not None and u.audio is None
    after = u.apply_to(config)
    assert after.storage.access_key == "AK2" and after.recording == config.recording
    moved = parse_update(update_body(storageConfig={**fresh, "bucket": "elsewhere"}), "mix")
    assert_fault(fails(moved.apply_to, config), 2, "clientRequest.storageConfig", "credentials")
    err = fails(parse_update, update_body(storageConfig={**fresh, "vendor": 4}), "individual")
    assert_fault(err, 2, "clientRequest.storageConfig.vendor")
