"""Server settings: one typed object filled from defaults, a config file, VAESERVE_* and flags.

Precedence, lowest first: field defaults, the config file (TOML or JSON), environment
variables named VAESERVE_<FIELD> (e.g. VAESERVE_MODEL_REPO, VAESERVE_PORT), explicit overrides
(the CLI's flags or keyword arguments). Secrets (`tokens`) have no flag, so they never show
in a process listing, and are redacted wherever settings are printed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

ENV_PREFIX = "VAESERVE_"
CONFIG_ENV = "VAESERVE_CONFIG"

Device = Literal["auto", "cuda", "cpu"]
GraphOptimization = Literal["disable", "basic", "extended", "all"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]

# Settings that hold secrets: no CLI flag (environment or config file only), redacted in print.
SECRETS = frozenset({"tokens"})
REDACTED = "<redacted>"


# The window sizes vae-export stores the drift statistic's null for (export/drift_null.py).
DRIFT_MIN_ROWS, DRIFT_MAX_ROWS = 16, 4096

# What each setting does (CLI help).
HELP: dict[str, str] = {
    "model_repo": "model repository: REPO/NAME/VERSION/ folders from vae-export",
    "host": "address to listen on",
    "port": "port to listen on; 0 picks a free port (the bound one is printed)",
    "device": "auto: CUDA when it really loads, else CPU; cuda: fail without it",
    "cuda_device_id": "CUDA device ordinal for the CUDA execution provider",
    "intra_op_threads": "onnxruntime threads per graph call; 0: one per physical core",
    "inter_op_threads": "onnxruntime inter-op threads (graphs here are sequential)",
    "allow_spinning": "let onnxruntime worker threads spin between calls",
    "graph_optimization": "onnxruntime graph optimisation level",
    "max_batch_rows": "dynamic batching: most rows merged into one onnxruntime call",
    "max_queue_delay_ms": (
        "dynamic batching: longest wait for more rows to merge; 0: merge only what queued "
        "while the previous call ran"
    ),
    "max_request_rows": "most rows in one request; more gets RESOURCE_EXHAUSTED",
    "max_iw_samples": "most importance samples per row (ScoreRequest.iw_samples)",
    "max_explain_features": (
        "most top features per row an explanation may ask for (ScoreRequest.explain, KServe "
        "parameter explain); more gets RESOURCE_EXHAUSTED"
    ),
    "max_message_bytes": "largest gRPC message received or sent",
    "stream_pipeline_depth": "batches of one Score stream being scored at once",
    "inference_threads": "threads that call onnxruntime (one call per graph at a time)",
    "poll_interval_s": "seconds between scans for new model versions; 0: never",
    "grace_s": "on SIGTERM, seconds in-flight calls get to finish",
    "warmup": "run each graph once at load, before it is reported SERVING",
    "verify_hashes": "check each graph's sha256 against its manifest at load",
    "kserve": "also serve the KServe v2 / Open Inference Protocol (inference.GRPCInferenceService)",
    "tls_cert": "PEM server certificate (chain); with tls_key turns TLS on",
    "tls_key": "PEM private key of tls_cert",
    "tls_client_ca": "PEM CA bundle; clients must present a certificate it signed (mutual TLS)",
    "token_file": "file of accepted bearer tokens, one per line (# comments); turns token auth on",
    "tokens": (
        "accepted bearer tokens, comma-separated; turns token auth on (secret: environment "
        "or config file only, no flag)"
    ),
    "open_health": "let grpc.health.v1 checks through without a token (for probes)",
    "max_streams": "most streams (Score, ModelStreamInfer) open at once; 0: no limit",
    "max_stream_inflight_rows": (
        "most rows one stream may have received but not yet answered; a message over it is "
        "answered RESOURCE_EXHAUSTED in the stream; 0: no limit"
    ),
    "drift_window_rows": (
        "drift monitoring: rows in each model version's window of recently scored rows "
        f"({DRIFT_MIN_ROWS}..{DRIFT_MAX_ROWS}, the window sizes exports store a null for); "
        "0: off"
    ),
    "drift_period_s": "drift monitoring: seconds between evaluations of the windows (gauges)",
    "metrics_port": "port of the Prometheus /metrics HTTP endpoint; 0: no endpoint",
    "metrics_host": "address the metrics endpoint listens on; empty: the same as host",
    "health_port": (
        "port of a plaintext listener that serves only grpc.health.v1, for probes that cannot "
        "speak TLS (Kubernetes gRPC probes); 0: none"
    ),
    "health_host": "address the health-only port listens on; empty: the same as host",
    "log_format": "text: human-readable lines; json: one JSON object per line",
    "access_log": "log one line per call and per stream (rpc, model, code, rows, time, id)",
    "log_level": "logging level",
}


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the setting and its source."""


@dataclass(frozen=True)
class ServerSettings:
    """Everything `vae-server` can be told; see the module docstring for where values come from."""

    model_repo: Path = None  # type: ignore[assignment]  # required; checked below
    host: str = "0.0.0.0"
    port: int = 50051
    device: Device = "auto"
    cuda_device_id: int = 0
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    allow_spinning: bool = False
    graph_optimization: GraphOptimization = "all"
    max_batch_rows: int = 4096
    max_queue_delay_ms: float = 0.0
    max_request_rows: int = 4096
    max_iw_samples: int = 256
    max_explain_features: int = 32
    max_message_bytes: int = 32 * 1024 * 1024
    stream_pipeline_depth: int = 4
    inference_threads: int = 4
    poll_interval_s: float = 10.0
    grace_s: float = 10.0
    warmup: bool = True
    verify_hashes: bool = True
    kserve: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    token_file: Path | None = None
    tokens: str = dataclasses.field(default="", repr=False)
    open_health: bool = True
    max_streams: int = 64
    max_stream_inflight_rows: int = 65536
    drift_window_rows: int = 1024
    drift_period_s: float = 10.0
    metrics_port: int = 0
    metrics_host: str = ""
    health_port: int = 0
    health_host: str = ""
    log_format: LogFormat = "text"
    access_log: bool = True
    log_level: LogLevel = "INFO"

    def __post_init__(self) -> None:
        if self.model_repo is None:
            raise SettingsError(
                "model_repo is required: pass --model-repo DIR or set VAESERVE_MODEL_REPO"
            )
        object.__setattr__(self, "model_repo", Path(self.model_repo))
        hints = _hints()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _coerce(f.name, hints[f.name], value, "value"))
        self._check()

    def _check(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise SettingsError(msg)

        need(0 <= self.port <= 65535, f"port {self.port} is not in 0..65535")
        need(self.cuda_device_id >= 0, "cuda_device_id must be >= 0")
        need(self.intra_op_threads >= 0, "intra_op_threads must be >= 0 (0: onnxruntime default)")
        need(self.inter_op_threads >= 0, "inter_op_threads must be >= 0")
        for name in ("max_batch_rows", "max_request_rows", "max_iw_samples", "inference_threads"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1")
        need(self.max_explain_features >= 1, "max_explain_features must be >= 1")
        need(
            self.drift_window_rows == 0
            or DRIFT_MIN_ROWS <= self.drift_window_rows <= DRIFT_MAX_ROWS,
            f"drift_window_rows {self.drift_window_rows} is outside {DRIFT_MIN_ROWS}.."
            f"{DRIFT_MAX_ROWS}, the window sizes exports store the drift null for (0 turns "
            "drift monitoring off)",
        )
        need(self.drift_period_s > 0, "drift_period_s must be > 0 (seconds)")
        need(self.stream_pipeline_depth >= 1, "stream_pipeline_depth must be >= 1")
        need(self.max_message_bytes >= 1024, "max_message_bytes must be >= 1024")
        need(self.max_queue_delay_ms >= 0, "max_queue_delay_ms must be >= 0")
        need(self.poll_interval_s >= 0, "poll_interval_s must be >= 0 (0 turns polling off)")
        need(self.grace_s >= 0, "grace_s must be >= 0")
        need(
            (self.tls_cert is None) == (self.tls_key is None),
            "tls_cert and tls_key go together: give both (TLS) or neither (plaintext)",
        )
        need(
            self.tls_client_ca is None or self.tls_cert is not None,
            "tls_client_ca (mutual TLS) needs TLS: give tls_cert and tls_key too",
        )
        need(self.max_streams >= 0, "max_streams must be >= 0 (0: no limit)")
        need(self.max_stream_inflight_rows >= 0, "max_stream_inflight_rows must be >= 0")
        need(
            0 <= self.metrics_port <= 65535, f"metrics_port {self.metrics_port} is not in 0..65535"
        )
        need(0 <= self.health_port <= 65535, f"health_port {self.health_port} is not in 0..65535")
        need(
            self.health_port == 0 or self.health_port not in (self.port, self.metrics_port),
            f"health_port {self.health_port} is also port or metrics_port; give it its own",
        )

    @property
    def tls(self) -> bool:
        """True when the server listens with TLS."""
        return self.tls_cert is not None

    @property
    def token_auth(self) -> bool:
        """True when calls need a bearer token."""
        return bool(self.tokens.strip()) or self.token_file is not None

    @property
    def address(self) -> str:
        """host:port as gRPC wants it (IPv6 hosts in brackets)."""
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"

    def replace(self, **changes: Any) -> ServerSettings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(
        cls,
        config: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        sources: dict[str, str] | None = None,
        **overrides: Any,
    ) -> ServerSettings:
        """Merge defaults < config file < VAESERVE_* env < overrides (None values are skipped).

        `env` defaults to os.environ; the config path may also come from VAESERVE_CONFIG.
        When `sources` is a dict it is filled with where each setting's value came from.
        """
        env = os.environ if env is None else env
        hints = _hints()
        values: dict[str, Any] = {}
        origin = dict.fromkeys(hints, "default")
        config = config or env.get(CONFIG_ENV) or None
        if config is not None:
            for key, value in read_config_file(Path(config)).items():
                values[key] = _coerce(key, hints[key], value, f"config file {config}")
                origin[key] = f"config file {config}"
        for name in hints:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = _coerce(name, hints[name], raw, ENV_PREFIX + name.upper())
                origin[name] = f"env {ENV_PREFIX + name.upper()}"
        for name, value in overrides.items():
            if name not in hints:
                raise SettingsError(f"unknown setting {name!r}; known: {', '.join(hints)}")
            if value is not None:
                values[name] = _coerce(name, hints[name], value, "argument")
                origin[name] = "flag"
        if sources is not None:
            sources.update(origin)
        return cls(**values)

    def redacted(self) -> dict[str, Any]:
        """Every setting by name, secrets replaced by "<redacted>" (empty secrets stay empty)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = REDACTED if f.name in SECRETS and value else value
        return out

    def to_toml(self, sources: Mapping[str, str] | None = None) -> str:
        """The effective settings as a `[server]` TOML table (secrets redacted), one per line.

        With `sources`, each line ends with a comment saying where its value came from.
        """
        lines = ["[server]"]
        for name, value in self.redacted().items():
            line = f"# {name} = (unset)" if value is None else f"{name} = {_toml_value(value)}"
            if sources is not None:
                line = f"{line:<48} # {sources.get(name, 'default')}"
            lines.append(line)
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def field_help() -> dict[str, str]:
    """Help text of each setting, for the CLI."""
    return {f.name: HELP.get(f.name, "") for f in dataclasses.fields(ServerSettings)}


def field_types() -> dict[str, Any]:
    """Resolved type of each setting (Path, str, int, float, bool or a Literal)."""
    return _hints()


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into {setting: value}; dashes in keys become underscores.

    A `[server]` table (TOML) or `"server"` object (JSON) is used when present, so one file
    can hold other sections too.
    """
    if not path.is_file():
        raise SettingsError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else _toml_loads(text)
    except ValueError as exc:
        raise SettingsError(f"config file {path}: cannot parse ({exc})") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: expected a table/object of settings")
    if isinstance(data.get("server"), dict):
        data = data["server"]
    out = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = _hints()
    unknown = sorted(set(out) - set(known))
    if unknown:
        raise SettingsError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(known)}"
        )
    return out


def _toml_loads(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError as exc:
            raise SettingsError(
                "TOML config files need Python 3.11+ or the tomli package; use JSON instead"
            ) from exc
    return tomllib.loads(text)


_HINTS: dict[str, Any] | None = None


def _hints() -> dict[str, Any]:
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(ServerSettings)
    return _HINTS


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def optional_inner(tp: Any) -> Any | None:
    """For `X | None` the type X, else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _coerce(name: str, tp: Any, value: Any, source: str) -> Any:
    """Convert `value` to the setting's type; SettingsError names the setting and source."""
    where = f"{name} (from {source})"
    inner = optional_inner(tp)
    if inner is not None:
        if value is None or (isinstance(value, str) and value.strip() == ""):
            return None
        return _coerce(name, inner, value, source)
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        v = str(value)
        for c in choices:
            if v.lower() == str(c).lower():
                return c
        raise SettingsError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        v = str(value).strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        raise SettingsError(f"{where}: {value!r} is not a boolean (true/false, 1/0, yes/no)")
    if tp is int:
        if isinstance(value, bool):
            raise SettingsError(f"{where}: {value!r} is not an integer")
        try:
            if isinstance(value, float) and value.is_integer():
                return int(value)
            return int(str(value).strip())
        except ValueError:
            raise SettingsError(f"{where}: {value!r} is not an integer") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SettingsError(f"{where}: {value!r} is not a number") from None
    if tp is Path:
        return Path(value)
    return str(value)
