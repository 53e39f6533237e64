"""KServe v2 messages to and from numpy: input tensors (raw bytes or typed contents), request
parameters, and outputs in the form the request asks for.

Decoding checks what only a KServe message can get wrong (names, datatypes, byte and value
counts, parameter types) and leaves shapes, limits and values to server/validation.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vaeserve.proto.inference import grpc_service_pb2 as pb
from vaeserve.server import validation
from vaeserve.server.errors import RequestError, echo, echo_shape
from vaeserve.server.kserve_models import Target
from vaeserve.server.validation import MatrixSpec

# KServe datatype -> numpy dtype (little-endian) and the typed-contents field that holds it.
DATATYPES: dict[str, tuple[np.dtype, str | None]] = {
    "BOOL": (np.dtype("?"), "bool_contents"),
    "INT8": (np.dtype("i1"), "int_contents"),
    "INT16": (np.dtype("<i2"), "int_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"),
    "INT64": (np.dtype("<i8"), "int64_contents"),
    "UINT8": (np.dtype("u1"), "uint_contents"),
    "UINT16": (np.dtype("<u2"), "uint_contents"),
    "UINT32": (np.dtype("<u4"), "uint_contents"),
    "UINT64": (np.dtype("<u8"), "uint64_contents"),
    "FP16": (np.dtype("<f2"), None),
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "FP64": (np.dtype("<f8"), "fp64_contents"),
}
INPUT_DATATYPES = ("FP32", "FP64", "FP16", "INT64", "INT32")
_NUMPY_TO_DATATYPE = {
    np.dtype("?"): "BOOL",
    np.dtype("<f4"): "FP32",
    np.dtype("<f8"): "FP64",
    np.dtype("<i8"): "INT64",
}
# Outputs that exist only when a request parameter asks for them, and that parameter.
ON_REQUEST = {
    "iw_nll": "iw_samples",
    **dict.fromkeys(
        (
            "explain_index",
            "explain_nll",
            "explain_excess",
            "explain_value",
            "explain_reconstruction",
        ),
        "explain",
    ),
}
# How validation describes each input: x feature rows, z latent points, cond condition rows.
_INPUT_SPECS = {"x": MatrixSpec.rows, "z": MatrixSpec.latent, "cond": MatrixSpec.condition}


def declared_rows(req: pb.ModelInferRequest) -> int:
    """Rows a request says it carries: the first dimension of its x or z input (else 0)."""
    for t in req.inputs:
        if t.name in ("x", "z") and len(t.shape):
            return max(0, int(t.shape[0]))
    return 0


# ---- inputs ------------------------------------------------------------------------------
def read_inputs(
    req: pb.ModelInferRequest, target: Target, max_rows: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows (x or z) and the condition (None for an unconditional model), checked."""
    arrays = _read_arrays(req, target, max_rows)
    rows = arrays[target.row_input]
    if not validation.expect_condition(target.model, "cond" in arrays):
        return rows, None
    return rows, validation.condition_rows(arrays["cond"], rows.shape[0])


def _read_arrays(req: pb.ModelInferRequest, t: Target, max_rows: int) -> dict[str, np.ndarray]:
    specs = {s.name: s for s in t.inputs()}
    raw = list(req.raw_input_contents)
    if raw and len(raw) != len(req.inputs):
        raise RequestError.invalid(
            f"raw_input_contents has {len(raw)} entries but there are {len(req.inputs)} "
            "inputs; send one per input, in order"
        )
    seen: set[str] = set()
    out: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(req.inputs):
        if tensor.name in seen:
            raise RequestError.invalid(f"input {echo(tensor.name)} is given twice")
        seen.add(tensor.name)
        if tensor.name not in specs:
            raise RequestError.invalid(
                f"model {echo(t.name)} has no input {echo(tensor.name)}; its inputs: "
                f"{', '.join(specs)}"
            )
        if raw and tensor.HasField("contents"):
            raise RequestError.invalid(
                f"input {echo(tensor.name)} has typed contents but the request uses "
                "raw_input_contents; use one or the other for all inputs"
            )
        if tensor.datatype not in INPUT_DATATYPES:
            raise RequestError.invalid(
                f"input {echo(tensor.name)}: datatype {echo(tensor.datatype)} is not accepted; "
                "send FP32 (FP64, FP16, INT64 and INT32 are converted to float32)"
            )
        what = f"input {echo(tensor.name)}"
        validation.check_shape(tensor.shape, _INPUT_SPECS[tensor.name](t.model, max_rows, what))
        a = decode_tensor(tensor, raw[i] if raw else None, what)
        out[tensor.name] = validation.finite_float32(a, what)
    if t.row_input not in out:
        need = specs[t.row_input]
        raise RequestError.invalid(
            f"input {t.row_input!r} is missing: send {need.datatype} [n, "
            f"{need.row_shape[0]}] for {t.model.label}"
        )
    return out


def decode_tensor(
    tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, what: str
) -> np.ndarray:
    """An input's elements as an array of its shape, from raw bytes or typed contents."""
    dtype, field = DATATYPES[tensor.datatype]
    shape = tuple(int(d) for d in tensor.shape)
    count = int(np.prod(shape, dtype=np.int64))
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise RequestError.invalid(
                f"{what}: {len(raw)} bytes do not match shape {echo_shape(shape)} of "
                f"{tensor.datatype} ({count * dtype.itemsize} bytes expected)"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    if field is None:
        raise RequestError.invalid(
            f"{what}: {tensor.datatype} has no typed contents; send it in raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise RequestError.invalid(
            f"{what}: contents.{field} holds {len(values)} values but shape {echo_shape(shape)} "
            f"needs {count}"
        )
    return np.asarray(values, dtype=dtype).reshape(shape)


# ---- parameters --------------------------------------------------------------------------
def _param(p: pb.InferParameter) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def _int_param(params: Any, name: str) -> int:
    if name not in params:
        return 0
    value = _param(params[name])
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError.invalid(f"parameter {name!r} must be an integer (int64_param)")
    return int(value)


@dataclass
class ScorerParams:
    """The scorer's request parameters (None: the model's default score or threshold)."""

    score: str | None = None
    threshold: float | None = None
    iw_samples: int = 0
    seed: int = 0
    explain: int = 0


def scorer_params(params: Any) -> ScorerParams:
    """score (string), threshold (number, nats), iw_samples, seed and explain (integers) from a
    request."""
    out = ScorerParams()
    if "score" in params:
        score = _param(params["score"])
        if not isinstance(score, str):
            raise RequestError.invalid("parameter 'score' must be a string_param")
        out.score = score
    if "threshold" in params:
        threshold = _param(params["threshold"])
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise RequestError.invalid("parameter 'threshold' must be a number (nats)")
        out.threshold = float(threshold)
    out.iw_samples = _int_param(params, "iw_samples")
    out.seed = validation.check_seed(_int_param(params, "seed"), "parameter 'seed'")
    out.explain = _int_param(params, "explain")
    return out


# ---- outputs -----------------------------------------------------------------------------
def requested_outputs(
    req: pb.ModelInferRequest, t: Target, results: dict[str, np.ndarray]
) -> list[str]:
    """The outputs to send: those the request names (in its order), else every one computed."""
    if not req.outputs:
        return [s.name for s in t.outputs() if s.name in results]
    names = []
    for o in req.outputs:
        if o.name not in results:
            known = [s.name for s in t.outputs()]
            if o.name in ON_REQUEST and o.name in known:
                raise RequestError.invalid(
                    f"output {o.name!r} needs the request parameter {ON_REQUEST[o.name]} > 0"
                )
            raise RequestError.invalid(
                f"model {echo(t.name)} has no output {echo(o.name)}; its outputs: "
                f"{', '.join(known)}"
            )
        if o.name not in names:
            names.append(o.name)
    return names


def raw_outputs(req: pb.ModelInferRequest) -> bool:
    """Whether outputs go as raw bytes: as the inputs came, unless binary_data_output says."""
    if "binary_data_output" not in req.parameters:
        return bool(req.raw_input_contents)
    value = _param(req.parameters["binary_data_output"])
    if not isinstance(value, bool):
        raise RequestError.invalid("parameter 'binary_data_output' must be a bool_param")
    return value


def add_output(resp: pb.ModelInferResponse, name: str, array: np.ndarray, raw: bool) -> None:
    """Append one output as raw bytes or typed contents."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    datatype = _NUMPY_TO_DATATYPE.get(array.dtype)
    if datatype is None:
        array = array.astype(np.float32)
        datatype = "FP32"
    out = resp.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
    if raw:
        resp.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    else:
        field = DATATYPES[datatype][1]
        assert field is not None
        getattr(out.contents, field).extend(array.ravel().tolist())
