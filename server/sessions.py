"""onnxruntime sessions: device choice that is checked, tuned options, and one graph runner.

onnxruntime falls back to CPU silently when the CUDA provider cannot load (see "Devices" in
docs/server.md), so every session's get_providers() is checked, and `device="cuda"` fails at
start with a message that says why.
"""

from __future__ import annotations

import base64
import ctypes
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vaeserve.server.cuda_libs import preload_cuda_libraries
from vaeserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# A one-node Identity graph (opset 13), used to find out once whether CUDA really loads.
_PROBE_MODEL = base64.b64decode(
    "CAgSCHZhZXNlcnZlOjsKEAoBeBIBeSIISWRlbnRpdHkSBXByb2JlWg8KAXgSCgoICAESBAoCCAFiDwoBeRIKCggIARIE"
    "CgIIAUIECgAQDQ=="
)

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class DeviceError(RuntimeError):
    """The requested device cannot run: e.g. --device cuda where CUDA does not load."""


def cuda_failure_reason() -> str:
    """Best guess at why the CUDA provider did not load, by loading its library ourselves."""
    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if not lib.is_file():
        return "this onnxruntime build has no CUDA provider (install onnxruntime-gpu)"
    try:
        ctypes.CDLL(str(lib))
    except OSError as exc:
        return f"its library does not load: {exc}"
    return "its library loads but no CUDA device could be used (driver or GPU missing?)"


class SessionFactory:
    """Creates InferenceSessions with the server's options on the resolved device."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.requested = settings.device
        self._device: str | None = None
        self._lock = threading.Lock()

    @property
    def device(self) -> str:
        """ "cuda" or "cpu": the device sessions really run on (resolved on first use)."""
        if self._device is None:
            self.resolve_device()
        assert self._device is not None
        return self._device

    def resolve_device(self) -> str:
        """Probe once whether CUDA really loads; DeviceError when device=cuda and it does not."""
        with self._lock:
            if self._device is not None:
                return self._device
            if self.requested == "cpu":
                self._device = "cpu"
                return self._device
            quiet = self.requested == "auto"
            ok = False
            if CUDA in ort.get_available_providers():
                preload_cuda_libraries()
                if quiet:  # auto on a CPU-only machine: the fallback is expected, not an error
                    ort.set_default_logger_severity(4)
                try:
                    sess = ort.InferenceSession(
                        _PROBE_MODEL,
                        self._options(quiet=quiet),
                        providers=self._providers("cuda"),
                    )
                    ok = CUDA in sess.get_providers()
                except Exception as exc:
                    log.debug("CUDA probe raised: %s", exc)
                finally:
                    if quiet:
                        ort.set_default_logger_severity(2)
            if ok:
                self._device = "cuda"
            elif self.requested == "cuda":
                raise DeviceError(
                    "device 'cuda' was requested but onnxruntime cannot run the CUDA "
                    f"execution provider: {cuda_failure_reason()}. onnxruntime-gpu "
                    f"{ort.__version__} needs the CUDA and cuDNN libraries it was built for "
                    "on the library path and a visible GPU. Use --device auto or cpu to run "
                    "on the CPU."
                )
            else:
                log.info(
                    "device auto: the CUDA execution provider does not load (%s); using CPU",
                    cuda_failure_reason() if CUDA in ort.get_available_providers() else "absent",
                )
                self._device = "cpu"
            return self._device

    def _options(self, quiet: bool = False) -> ort.SessionOptions:
        s = self.settings
        so = ort.SessionOptions()
        so.intra_op_num_threads = s.intra_op_threads
        so.inter_op_num_threads = s.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = _OPT_LEVELS[s.graph_optimization]
        spin = "1" if s.allow_spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        if quiet:
            so.log_severity_level = 4
        return so

    def _providers(self, device: str) -> list:
        if device == "cuda":
            return [(CUDA, {"device_id": str(self.settings.cuda_device_id)}), CPU]
        return [CPU]

    def create(self, path: Path, name: str = "") -> GraphRunner:
        """Load one .onnx file on the resolved device; DeviceError if CUDA silently fell back."""
        device = self.device
        sess = ort.InferenceSession(
            os.fspath(path), self._options(), providers=self._providers(device)
        )
        providers = sess.get_providers()
        if device == "cuda" and CUDA not in providers:
            raise DeviceError(
                f"{path}: onnxruntime fell back to {providers} although CUDA loaded for the "
                "probe graph; check GPU memory and the CUDA provider's log lines"
            )
        return GraphRunner(name or path.stem, sess, device)


class GraphRunner:
    """One InferenceSession and how to call it; thread-safe (onnxruntime's run is)."""

    def __init__(self, name: str, session: ort.InferenceSession, device: str) -> None:
        self.name = name
        self.session = session
        self.device = device
        self.providers: list[str] = list(session.get_providers())
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.use_io_binding = CUDA in self.providers
        # onnxruntime's CPU arena keeps the largest call's memory for the session's life; a
        # run with these options gives its unused regions back when it ends
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, feeds: Mapping[str, np.ndarray], shrink: bool = False) -> dict[str, np.ndarray]:
        """Run the graph on CPU arrays and return CPU arrays by output name; with `shrink`,
        free the CPU arena's unused memory afterwards (after a large request)."""
        options = self._shrink if shrink else None
        if self.use_io_binding:
            binding = self.session.io_binding()
            for k, v in feeds.items():
                binding.bind_cpu_input(k, np.ascontiguousarray(v))
            for name in self.output_names:
                binding.bind_output(name, "cpu")
            self.session.run_with_iobinding(binding, options)
            outs = binding.copy_outputs_to_cpu()
        else:
            outs = self.session.run(self.output_names, dict(feeds), options)
        return dict(zip(self.output_names, outs, strict=True))
