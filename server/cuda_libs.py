"""Load the CUDA and cuDNN libraries that NVIDIA's pip packages install, before CUDA is probed.

onnxruntime-gpu looks for libcublasLt, libcudnn, ... on the library path only; with the
libraries installed as pip packages (nvidia-cublas, nvidia-cudnn-cu13, ...: the CUDA image's
way) `onnxruntime.preload_dlls()` loads them from site-packages first, so no LD_LIBRARY_PATH
is needed. It reports failures with print(); those lines go to the debug log instead, because
on a machine without the packages a CPU fallback is expected and the probe explains failures.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading

import onnxruntime as ort

log = logging.getLogger(__name__)

_lock = threading.Lock()
_done = False


def preload_cuda_libraries() -> None:
    """Call onnxruntime.preload_dlls() once per process (a no-op where onnxruntime lacks it)."""
    global _done
    with _lock:
        if _done:
            return
        _done = True
        preload = getattr(ort, "preload_dlls", None)
        if preload is None:
            return
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                preload(cuda=True, cudnn=True, msvc=False)
        except Exception as exc:  # a broken install must not stop a CPU fallback
            log.debug("onnxruntime.preload_dlls() raised: %s", exc)
        for line in out.getvalue().splitlines():
            if line.strip():
                log.debug("onnxruntime.preload_dlls(): %s", line.strip())
