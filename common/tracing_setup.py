"""OpenTelemetry tracing set up from the standard OTEL_* environment variables, for vae-server
and vae-client: whether tracing is on, and the SDK TracerProvider that exports it.

Tracing is on when OTEL_TRACES_EXPORTER names an exporter other than `none`, or when an OTLP
endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; the
exporter is then `otlp`); OTEL_SDK_DISABLED=true turns it off. As the SDK's own
autoconfiguration does: exporters are the `opentelemetry_traces_exporter` entry points
(`otlp` is OTLP over gRPC, or over HTTP with OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL=
http/protobuf; `console`), each behind a BatchSpanProcessor (OTEL_BSP_*); the sampler is
OTEL_TRACES_SAMPLER's; the resource comes from OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
The SDK and the OTLP exporter are the `tracing` extra; without it a configured process says so
in one line and runs untraced.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'vaeserve[tracing]'"
EXPORTER_GROUP = "opentelemetry_traces_exporter"
_OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}


def tracing_requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* variables ask for traces (see the module docstring)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if names:
        return names != "none"
    return any(
        env.get(k, "").strip()
        for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def exporter_entry_points(env: Mapping[str, str] | None = None) -> list[str]:
    """The entry-point names of the configured span exporters (`otlp` resolved by protocol)."""
    env = os.environ if env is None else env
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    ).strip() or "grpc"
    out = []
    for name in names or ["otlp"]:
        if name == "otlp" and protocol not in _OTLP_BY_PROTOCOL:
            log.warning(
                "OTLP protocol %r is not supported here (grpc or http/protobuf); spans for "
                "the otlp exporter are dropped",
                protocol,
            )
        elif name != "none":
            out.append(_OTLP_BY_PROTOCOL.get(protocol, name) if name == "otlp" else name)
    return out


def provider_from_environment(service_name: str) -> Any | None:
    """An SDK TracerProvider as the OTEL_* variables configure it, with `service_name` unless
    they name the service; None when tracing is off, when the `tracing` extra is missing or
    when no configured exporter loads (each said in one log line)."""
    if not tracing_requested():
        return None
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning(
            "tracing is configured (OTEL_*) but the OpenTelemetry SDK is not installed (no "
            "module named %r), so this process is not traced: %s",
            (exc.name or "opentelemetry").split(".")[0],
            INSTALL_HINT,
        )
        return None
    exporters = [e for e in map(_load_exporter, exporter_entry_points()) if e is not None]
    if not exporters:
        return None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER[_ARG]
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def install_global(provider: Any) -> None:
    """Make `provider` the process's global TracerProvider unless one is set already (an
    embedding application's own wins)."""
    from opentelemetry import trace

    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)


def _load_exporter(name: str) -> Any | None:
    """An instance of the span exporter entry point `name` (configured by its own OTEL_*
    variables), or None with one log line when it is not installed or fails to start."""
    found = list(entry_points(group=EXPORTER_GROUP, name=name))
    if not found:
        log.warning(
            "span exporter %r (OTEL_TRACES_EXPORTER) is not installed; spans for it are "
            "dropped. Installed: %s",
            name,
            ", ".join(sorted({e.name for e in entry_points(group=EXPORTER_GROUP)})) or "none",
        )
        return None
    try:
        return found[0].load()()
    except Exception as exc:
        log.warning("span exporter %r failed to start (%s); spans for it are dropped", name, exc)
        return None
