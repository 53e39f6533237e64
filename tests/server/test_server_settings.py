"""ServerSettings: defaults < config file < VAESERVE_* environment < explicit values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vaeserve.server import ServerSettings, SettingsError
from vaeserve.server.settings import HELP, field_types


def test_defaults_and_required_repo(tmp_path: Path) -> None:
    s = ServerSettings(model_repo=str(tmp_path))
    assert s.model_repo == tmp_path and isinstance(s.model_repo, Path)
    assert (s.host, s.port, s.device) == ("0.0.0.0", 50051, "auto")
    assert s.max_request_rows == 4096
    assert s.max_message_bytes >= 4096 * 784 * 4 + 4096  # a 4096 x 784 float32 batch fits
    with pytest.raises(SettingsError, match="VAESERVE_MODEL_REPO"):
        ServerSettings.load(env={})


def test_precedence_file_env_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nport = 1000\nhost = "::1"\nmax-batch-rows = 7\nwarmup = false\n')
    env = {"VAESERVE_PORT": "2000", "VAESERVE_DEVICE": "CPU", "VAESERVE_MODEL_REPO": "/m"}
    s = ServerSettings.load(config=cfg, env=env)
    assert s.port == 2000 and s.device == "cpu" and s.max_batch_rows == 7
    assert s.warmup is False and s.model_repo == Path("/m")
    assert s.address == "[::1]:2000"
    s = ServerSettings.load(config=cfg, env=env, port=3000, host=None)
    assert s.port == 3000 and s.host == "::1"  # None means "not given"
    env["VAESERVE_CONFIG"] = str(cfg)
    assert ServerSettings.load(env=env).max_batch_rows == 7


def test_json_config_and_bool_env(tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model_repo": "/r", "grace_s": 2, "allow_spinning": True}))
    s = ServerSettings.load(config=cfg, env={"VAESERVE_VERIFY_HASHES": "no"})
    assert s.grace_s == 2.0 and s.allow_spinning is True and s.verify_hashes is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VAESERVE_PORT": "eighty"}, "VAESERVE_PORT"),
        ({"VAESERVE_PORT": "70000"}, "not in 0..65535"),
        ({"VAESERVE_DEVICE": "tpu"}, "auto, cuda, cpu"),
        ({"VAESERVE_WARMUP": "maybe"}, "not a boolean"),
        ({"VAESERVE_MAX_BATCH_ROWS": "0"}, "max_batch_rows must be >= 1"),
        ({"VAESERVE_MAX_QUEUE_DELAY_MS": "-1"}, "max_queue_delay_ms"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        ServerSettings.load(env={"VAESERVE_MODEL_REPO": "/r", **env})


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        ServerSettings.load(config=tmp_path / "none.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("port = = 1")
    with pytest.raises(SettingsError, match="cannot parse"):
        ServerSettings.load(config=bad, env={})
    unknown = tmp_path / "u.json"
    unknown.write_text(json.dumps({"model_repo": "/r", "threads": 2}))
    with pytest.raises(SettingsError, match="unknown setting"):
        ServerSettings.load(config=unknown, env={})


def test_every_setting_has_help() -> None:
    assert set(HELP) == set(field_types())


def test_security_and_observability_settings(tmp_path: Path) -> None:
    env = {
        "VAESERVE_MODEL_REPO": "/r",
        "VAESERVE_TLS_CERT": "/c.pem",
        "VAESERVE_TLS_KEY": "/k.pem",
        "VAESERVE_TLS_CLIENT_CA": "",  # empty: unset
        "VAESERVE_TOKENS": "a,b",
        "VAESERVE_LOG_FORMAT": "JSON",
        "VAESERVE_METRICS_PORT": "9100",
        "VAESERVE_OPEN_HEALTH": "no",
    }
    sources: dict[str, str] = {}
    s = ServerSettings.load(env=env, sources=sources, max_streams=3)
    assert s.tls_cert == Path("/c.pem") and s.tls_client_ca is None and s.tls and s.token_auth
    assert s.log_format == "json" and s.metrics_port == 9100 and s.open_health is False
    assert sources["max_streams"] == "flag" and sources["tokens"] == "env VAESERVE_TOKENS"
    assert sources["port"] == "default"
    assert "a,b" not in repr(s) and s.redacted()["tokens"] == "<redacted>"
    assert ServerSettings(model_repo="/r").redacted()["tokens"] == ""
    defaults = ServerSettings(model_repo="/r")
    assert defaults.kserve and not defaults.tls and not defaults.token_auth
    assert defaults.metrics_port == 0 and defaults.max_streams == 64
    with pytest.raises(SettingsError, match="metrics_port 70000"):
        ServerSettings(model_repo="/r", metrics_port=70000)
    with pytest.raises(SettingsError, match="max_streams must be >= 0"):
        ServerSettings(model_repo="/r", max_streams=-1)
