"""Server settings: one typed object filled from defaults, a config file, VAESERVE_* and flags.

Precedence, lowest first: field defaults, the config file (TOML or JSON), environment
variables named VAESERVE_<FIELD> (e.g. VAESERVE_MODEL_REPO, VAESERVE_PORT), explicit overrides
(the CLI's flags or keyword arguments).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
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
    "max_message_bytes": "largest gRPC message received or sent",
    "stream_pipeline_depth": "batches of one Score stream being scored at once",
    "inference_threads": "threads that call onnxruntime (one call per graph at a time)",
    "poll_interval_s": "seconds between scans for new model versions; 0: never",
    "grace_s": "on SIGTERM, seconds in-flight calls get to finish",
    "warmup": "run each graph once at load, before it is reported SERVING",
    "verify_hashes": "check each graph's sha256 against its manifest at load",
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
    max_message_bytes: int = 32 * 1024 * 1024
    stream_pipeline_depth: int = 4
    inference_threads: int = 4
    poll_interval_s: float = 10.0
    grace_s: float = 10.0
    warmup: bool = True
    verify_hashes: bool = True
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
        need(self.stream_pipeline_depth >= 1, "stream_pipeline_depth must be >= 1")
        need(self.max_message_bytes >= 1024, "max_message_bytes must be >= 1024")
        need(self.max_queue_delay_ms >= 0, "max_queue_delay_ms must be >= 0")
        need(self.poll_interval_s >= 0, "poll_interval_s must be >= 0 (0 turns polling off)")
        need(self.grace_s >= 0, "grace_s must be >= 0")

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
        **overrides: Any,
    ) -> ServerSettings:
        """Merge defaults < config file < VAESERVE_* env < overrides (None values are skipped).

        `env` defaults to os.environ; the config path may also come from VAESERVE_CONFIG.
        """
        env = os.environ if env is None else env
        hints = _hints()
        values: dict[str, Any] = {}
        config = config or env.get(CONFIG_ENV) or None
        if config is not None:
            for key, value in read_config_file(Path(config)).items():
                values[key] = _coerce(key, hints[key], value, f"config file {config}")
        for name in hints:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = _coerce(name, hints[name], raw, ENV_PREFIX + name.upper())
        for name, value in overrides.items():
            if name not in hints:
                raise SettingsError(f"unknown setting {name!r}; known: {', '.join(hints)}")
            if value is not None:
                values[name] = _coerce(name, hints[name], value, "argument")
        return cls(**values)


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


def _coerce(name: str, tp: Any, value: Any, source: str) -> Any:
    """Convert `value` to the setting's type; SettingsError names the setting and source."""
    where = f"{name} (from {source})"
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
