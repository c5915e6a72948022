"""Unit tests of configuration loading, the CLI parser and the log formatters."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from api.cli import _parser, main
from api.logs import JsonFormatter, KeyValueFormatter
from api.settings import (
    DEFAULT_DATA_DIR,
    DEFAULT_HOST,
    DEFAULT_PORT,
    Settings,
    load_settings,
)
from ingest.config import IngestSettings, RecorderSettings


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "reelhouse.toml"
    path.write_text(text, encoding="utf-8")
    return path


# load_settings -----------------------------------------------------------------------------


def test_defaults() -> None:
    s = load_settings(env={})
    assert s == Settings()
    assert s.http.host == DEFAULT_HOST == "127.0.0.1"
    assert s.http.port == DEFAULT_PORT == 8080
    assert s.data_dir == DEFAULT_DATA_DIR == Path("data")
    assert s.auth.api_key == ""
    assert s.log_json is False
    assert s.log_level == "INFO"
    assert s.ingest == IngestSettings()
    assert s.ingest.max_frame_bytes == 4 * 1024 * 1024
    assert s.recorder == RecorderSettings()
    assert s.recorder.segment_target_s == 4.0
    assert s.recorder.aac_coder == "fast"
    assert s.spool.max_bytes == 20 * 1024**3


def test_toml_file_values(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        """
data_dir = "/var/lib/reelhouse"
log_json = true

[http]
host = "0.0.0.0"
port = 9000
public_url = "https://rec.example"

[auth]
api_key = "from-toml"

[recorder]
segment_target_s = 2.5

[ingest]
max_frame_bytes = 1048576

[spool]
max_bytes = 1000
""",
    )
    s = load_settings(path, env={})
    assert s.data_dir == Path("/var/lib/reelhouse")
    assert s.log_json is True
    assert (s.http.host, s.http.port) == ("0.0.0.0", 9000)
    assert s.http.public_url == "https://rec.example"
    assert s.auth.api_key == "from-toml"
    assert s.recorder.segment_target_s == 2.5
    assert s.ingest.max_frame_bytes == 1048576
    assert s.spool.max_bytes == 1000
    # untouched fields keep their defaults
    assert s.ingest.keepalive_s == IngestSettings().keepalive_s
    assert s.recorder.key_prefix == "recordings"


def test_environment_variables(tmp_path: Path) -> None:
    env = {
        "REELHOUSE_PORT": "9100",
        "REELHOUSE_HOST": "0.0.0.0",
        "REELHOUSE_API_KEY": "from-env",
        "REELHOUSE_DATA_DIR": str(tmp_path / "d"),
        "REELHOUSE_INGEST__GAP_S": "1.5",
        "REELHOUSE_LOG_JSON": "true",
        "REELHOUSE_SPOOL__UPLOAD_WORKERS": "2",
        "UNRELATED": "ignored",
    }
    s = load_settings(env=env)
    assert s.http.port == 9100 and isinstance(s.http.port, int)
    assert s.http.host == "0.0.0.0"
    assert s.auth.api_key == "from-env"
    assert s.data_dir == tmp_path / "d" and isinstance(s.data_dir, Path)
    assert s.ingest.gap_s == 1.5 and isinstance(s.ingest.gap_s, float)
    assert s.log_json is True
    assert s.spool.upload_workers == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("yes", True), ("ON", True), ("false", False), ("0", False), ("off", False)],
)
def test_environment_booleans(text: str, expected: bool) -> None:
    assert load_settings(env={"REELHOUSE_LOG_JSON": text}).log_json is expected


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[http]\nport = 7000\n[auth]\napi_key = "k"\n')
    s = load_settings(env={"REELHOUSE_CONFIG": str(path)})
    assert s.http.port == 7000
    assert s.auth.api_key == "k"


def test_explicit_config_file_wins_over_reelhouse_config(tmp_path: Path) -> None:
    named = _toml(tmp_path, "[http]\nport = 7001\n")
    other = tmp_path / "other.toml"
    other.write_text("[http]\nport = 7002\n", encoding="utf-8")
    s = load_settings(named, env={"REELHOUSE_CONFIG": str(other)})
    assert s.http.port == 7001


def test_precedence_defaults_toml_env_overrides(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        '[http]\nhost = "10.0.0.1"\nport = 7000\n[auth]\napi_key = "toml"\n[ingest]\ngap_s = 5.0\n',
    )
    env = {"REELHOUSE_PORT": "7100", "REELHOUSE_API_KEY": "env"}
    s = load_settings(path, env=env, overrides={"auth": {"api_key": "flag"}})
    assert s.http.host == "10.0.0.1"  # TOML over default
    assert s.http.port == 7100  # env over TOML
    assert s.auth.api_key == "flag"  # override over env
    assert s.ingest.gap_s == 5.0  # TOML only
    assert s.ingest.keepalive_s == IngestSettings().keepalive_s  # default only
    s = load_settings(path, env=env, overrides={"http": {"port": 0}, "data_dir": Path("x")})
    assert s.http.port == 0
    assert s.http.host == "10.0.0.1"  # a partial section override keeps the rest
    assert s.data_dir == Path("x")


def test_unknown_key_is_a_clear_error(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[http]\nprot = 1\n")
    with pytest.raises(ValueError, match=r"http: unknown setting 'prot'"):
        load_settings(path, env={})
    with pytest.raises(ValueError, match=r"ingest: unknown setting 'nope'"):
        load_settings(env={"REELHOUSE_INGEST__NOPE": "1"})
    with pytest.raises(ValueError, match=r"settings: unknown setting 'colour'"):
        load_settings(env={}, overrides={"colour": "red"})


def test_aac_coder_setting_and_its_check(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[recorder]\naac_coder = "twoloop"\n')
    assert load_settings(path, env={}).recorder.aac_coder == "twoloop"
    env = {"REELHOUSE_RECORDER__AAC_CODER": "anmr"}
    with pytest.raises(ValueError, match=r"recorder.aac_coder: expected one of fast, twoloop"):
        load_settings(env=env)


def test_unknown_section_is_a_clear_error(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[database]\nurl = 'x'\n")
    with pytest.raises(ValueError, match=r"unknown setting 'database'"):
        load_settings(path, env={})
    with pytest.raises(ValueError, match=r"unknown setting 'objects'"):
        load_settings(env={"REELHOUSE_OBJECTS__BUCKET": "b"})


def test_storage_section_from_env_and_its_checks(tmp_path: Path) -> None:
    env = {
        "REELHOUSE_STORAGE__BACKEND": "s3",
        "REELHOUSE_STORAGE__BUCKET": "recordings",
        "REELHOUSE_STORAGE__ENDPOINT_URL": "http://127.0.0.1:9000",
        "REELHOUSE_STORAGE__ADDRESSING_STYLE": "path",
        "REELHOUSE_STORAGE__MULTIPART_PART_BYTES": str(6 * 1024**2),
    }
    s3 = load_settings(env=env).storage.s3_config()
    assert (s3.bucket, s3.endpoint_url, s3.addressing_style) == (
        "recordings",
        "http://127.0.0.1:9000",
        "path",
    )
    assert s3.multipart_part_bytes == 6 * 1024**2 and s3.secret_key == ""
    with pytest.raises(ValueError, match=r"storage\.backend must be one of"):
        load_settings(env={"REELHOUSE_STORAGE__BACKEND": "ftp"})
    no_bucket = load_settings(env={"REELHOUSE_STORAGE__BACKEND": "s3"}).storage
    with pytest.raises(ValueError, match=r"storage\.bucket is required"):
        no_bucket.s3_config()
    assert (
        load_settings(env={"REELHOUSE_STORAGE__PRESIGN_EXPIRY_S": "900"}).storage.presign_expiry_s
        == 900
    )
    for bad in ("0", str(7 * 24 * 3600 + 1)):  # S3 signs for 7 days at the most
        with pytest.raises(ValueError, match=r"storage\.presign_expiry_s must be 1\.\.604800"):
            load_settings(env={"REELHOUSE_STORAGE__PRESIGN_EXPIRY_S": bad})


def test_section_must_be_a_table(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'http = "x"\n')
    with pytest.raises(ValueError, match=r"\[http\] must be a table"):
        load_settings(path, env={})


def test_non_numeric_port_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"http\.port: expected int, got 'eighty'"):
        load_settings(env={"REELHOUSE_PORT": "eighty"})
    path = _toml(tmp_path, '[http]\nport = "x80"\n')
    with pytest.raises(ValueError, match=r"http\.port: expected int, got 'x80'"):
        load_settings(path, env={})


def test_bad_number_in_a_section(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ingest\.gap_s: expected float, got 'soon'"):
        load_settings(env={"REELHOUSE_INGEST__GAP_S": "soon"})


def test_bad_boolean_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"settings\.log_json: expected a boolean, got 'maybe'"):
        load_settings(env={"REELHOUSE_LOG_JSON": "maybe"})
    path = _toml(tmp_path, 'log_json = "sometimes"\n')
    with pytest.raises(ValueError, match=r"expected a boolean, got 'sometimes'"):
        load_settings(path, env={})


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"REELHOUSE_INGEST__IDLE_END_S": "0"}, r"ingest\.idle_end_s must be a number above 0"),
        ({"REELHOUSE_INGEST__TICK_S": "-1"}, r"ingest\.tick_s must be"),
        ({"REELHOUSE_INGEST__KEEPALIVE_S": "nan"}, r"keepalive_s .*\(or 0: off\)"),
        ({"REELHOUSE_RECORDER__SEGMENT_TARGET_S": "1e400"}, r"segment_target_s must be"),
        ({"REELHOUSE_WEBRTC__MAX_SESSIONS": "-1"}, r"webrtc\.max_sessions must be"),
        ({"REELHOUSE_PORT": "70000"}, r"http\.port must be at most 65535"),
        ({"REELHOUSE_HOST": ""}, r"http\.host must name an address"),
        ({"REELHOUSE_LOG_LEVEL": "verbose"}, r"log_level must be one of"),
    ],
)
def test_values_out_of_range_are_refused(env: dict[str, str], says: str) -> None:
    """0 where nothing says what 0 means (an idle_end_s of 0 spun a core and ended every
    session at once), negatives, NaN and infinity, a port past 65535 (uvloop wraps it), an
    empty host (every interface)."""
    with pytest.raises(ValueError, match=says):
        load_settings(env=env)


@pytest.mark.parametrize(
    "env",
    [{"REELHOUSE_PORT": "0"}, {"REELHOUSE_INGEST__KEEPALIVE_S": "0"},
     {"REELHOUSE_INGEST__WRITER_LANES": "0"}, {"REELHOUSE_LOG_LEVEL": "debug"}],
)  # fmt: skip
def test_zero_where_it_has_a_meaning_is_taken(env: dict[str, str]) -> None:
    load_settings(env=env)


def test_serve_with_a_bad_setting_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """One line and status 2, not a traceback."""
    assert main(["serve", "--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reelhouse: cannot start: configuration: http.port")
    assert "Traceback" not in err


# CLI ------------------------------------------------------------------------------------


def test_serve_flags() -> None:
    args = _parser().parse_args(
        ["serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", "/tmp/d", "--api-key", "k"]
    )
    assert args.command == "serve"
    assert args.host == "0.0.0.0"
    assert args.port == 0
    assert args.data_dir == Path("/tmp/d")
    assert args.api_key == "k"


def test_serve_flags_default_to_none() -> None:
    args = _parser().parse_args(["serve"])
    # unset flags must not override TOML or environment values
    assert (args.host, args.port, args.data_dir, args.api_key, args.config) == (None,) * 5


def test_serve_port_must_be_a_number(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["serve", "--port", "eighty"])
    assert exc.value.code == 2
    assert "--port" in capsys.readouterr().err


def test_publish_flags_with_session() -> None:
    args = _parser().parse_args(
        [
            "publish",
            "testsrc",
            "--server",
            "http://127.0.0.1:8080",
            "--api-key",
            "k",
            "--session",
            "s-1",
            "--duration",
            "2.5",
            "--codec",
            "vp8",
        ]
    )
    assert args.command == "publish"
    assert args.source == "testsrc"
    assert args.server == "http://127.0.0.1:8080"
    assert args.api_key == "k"
    assert args.session == "s-1"
    assert args.platform_call_id is None
    assert args.duration == 2.5
    assert args.codec == "vp8"


def test_publish_flags_with_platform_call_id() -> None:
    args = _parser().parse_args(
        ["publish", "in.mp4", "--server", "http://x", "--api-key", "k", "--platform-call-id", "c1"]
    )
    assert args.source == "in.mp4"
    assert args.platform_call_id == "c1"
    assert args.session is None
    assert args.codec == "h264"  # the default
    assert args.duration is None


@pytest.mark.parametrize(
    "argv",
    [
        ["publish", "testsrc", "--api-key", "k", "--session", "s"],  # no --server
        ["publish", "testsrc", "--server", "http://x", "--session", "s"],  # no --api-key
        ["publish", "testsrc", "--server", "http://x", "--api-key", "k", "--codec", "av1"],
        ["publish", "testsrc", "--server", "http://x", "--api-key", "k"],  # into nothing
        ["publish", "testsrc", "--server", "http://x", "--appid", "a"],  # no --cname
        ["publish", "testsrc", "--server", "http://x", "--appid", "a", "--cname", "c",
         "--api-key", "k", "--session", "s"],  # a channel and a session
        ["publish", "testsrc", "--server", "http://x", "--api-key", "k", "--session", "s",
         "--uid", "7"],  # a channel's flag for a session
    ],
)  # fmt: skip
def test_publish_rejects_bad_flags(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before anything is sent, with argparse's exit status 2 and usage."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_publish_without_a_session_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["publish", "testsrc", "--server", "http://x", "--api-key", "k"])
    assert exc.value.code == 2
    assert "publish needs --session" in capsys.readouterr().err


# logging -----------------------------------------------------------------------------------


def _record(msg: str = "segment closed", **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("reelhouse.test")
    return logger.makeRecord(
        logger.name, logging.INFO, __file__, 1, msg, (), None, extra=extra or None
    )


def test_json_formatter_is_one_object_with_session_id() -> None:
    line = JsonFormatter().format(_record(session_id="s-42", index=3))
    assert "\n" not in line
    out = json.loads(line)
    assert out["session_id"] == "s-42"
    assert out["index"] == 3
    assert out["level"] == "INFO"
    assert out["logger"] == "reelhouse.test"
    assert out["msg"] == "segment closed"
    assert out["ts"].startswith("20") and "+00:00" in out["ts"]
    # the standard LogRecord attributes are not copied in
    assert "levelno" not in out and "pathname" not in out


def test_json_formatter_carries_exceptions() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    out = json.loads(JsonFormatter().format(record))
    assert "RuntimeError: boom" in out["exc"]


def test_key_value_formatter_includes_session_id() -> None:
    line = KeyValueFormatter().format(_record(session_id="s-42"))
    assert line.endswith("session_id=s-42")
    assert " INFO    reelhouse.test: segment closed " in line
    assert line[:4].isdigit() and "Z INFO" in line


def test_key_value_formatter_without_extra() -> None:
    line = KeyValueFormatter().format(_record())
    assert line.endswith("reelhouse.test: segment closed")
    assert "=" not in line
