"""Tracing set-up from the OTEL_* variables: when it is on, which exporters it loads, the
service name, and one log line for what it cannot load."""

from __future__ import annotations

import logging
import os

import pytest

from vaeserve.common.tracing_setup import (
    exporter_entry_points,
    provider_from_environment,
    tracing_requested,
)


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_when_tracing_is_on(env: dict[str, str], on: bool) -> None:
    assert tracing_requested(env) is on


def test_exporter_names_follow_the_sdk(caplog: pytest.LogCaptureFixture) -> None:
    assert exporter_entry_points({}) == ["otlp_proto_grpc"]
    assert exporter_entry_points({"OTEL_TRACES_EXPORTER": "otlp,console"}) == [
        "otlp_proto_grpc",
        "console",
    ]
    http = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert exporter_entry_points(http) == ["otlp_proto_http"]
    per_signal = {**http, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}
    assert exporter_entry_points(per_signal) == ["otlp_proto_grpc"]
    with caplog.at_level(logging.WARNING):
        assert exporter_entry_points({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}) == []
    assert "http/json" in caplog.text


def test_provider_from_environment(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(key)
    assert provider_from_environment("vae-server") is None  # nothing configured
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    provider = provider_from_environment("vae-server")
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "vae-server"
    provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "scoring-eu")
    provider = provider_from_environment("vae-server")
    assert provider.resource.attributes["service.name"] == "scoring-eu"
    provider.shutdown()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "no_such_exporter")
    with caplog.at_level(logging.WARNING):
        assert provider_from_environment("vae-server") is None
    (line,) = [r.getMessage() for r in caplog.records if "no_such_exporter" in r.getMessage()]
    assert "not installed" in line and "console" in line  # names what is installed
