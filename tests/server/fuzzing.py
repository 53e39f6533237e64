"""Hypothesis strategies for malformed but type-valid requests (and raw undecodable bytes) to
Encode, Decode, Sample, Score, ModelInfer and ModelStreamInfer, and `send`, which makes one
case's call and returns every status code it got (the call's and any in-stream ones).

Used by tests/server/test_fuzz.py (a few thousand cases in the suite) and benchmarks/fuzz.py
(the long run). The model repository they aim at holds "digits" (64 features, latent 8) and
"cond" (8 features, latent 2, a 3-column condition).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from hypothesis import strategies as st

from vaeserve.proto.inference import grpc_service_pb2 as kpb
from vaeserve.proto.vae.v1 import vae_pb2

# What a fuzzed call must never answer.
BAD_CODES = frozenset({"UNKNOWN", "INTERNAL", "DEADLINE_EXCEEDED"})
CALL_TIMEOUT_S = 30.0

VAE = "/vae.v1.VaeService/"
KSERVE = "/inference.GRPCInferenceService/"
METHODS = {
    "Encode": (VAE + "Encode", vae_pb2.EncodeResponse),
    "Decode": (VAE + "Decode", vae_pb2.DecodeResponse),
    "Sample": (VAE + "Sample", vae_pb2.SampleResponse),
    "Score": (VAE + "Score", vae_pb2.ScoreResponse),
    "ModelInfer": (KSERVE + "ModelInfer", kpb.ModelInferResponse),
    "ModelStreamInfer": (KSERVE + "ModelStreamInfer", kpb.ModelStreamInferResponse),
}
STREAMING = {"Score", "ModelStreamInfer"}

INT64 = (-(2**63), 2**63 - 1)
UINT64_MAX = 2**64 - 1
UINT32_MAX = 2**32 - 1

# ---- scalars -----------------------------------------------------------------------------
names = st.one_of(
    st.sampled_from(["", "digits", "cond", "nope", "digits.encoder", "digits.decoder"]),
    st.sampled_from(["digits.scorer", "cond.decoder", "DIGITS", "digits ", "m" * 5000]),
    st.text(max_size=20),
)
int64s = st.one_of(
    st.sampled_from([0, 1, 2, -1, 7, INT64[0], INT64[1], INT64[1] - 3, 2**31, 2**53]),
    st.integers(*INT64),
)
uint64s = st.one_of(st.sampled_from([0, 1, 42, 2**63, UINT64_MAX]), st.integers(0, UINT64_MAX))
floats = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 1e300, -1e300, float("nan"), float("inf"), -float("inf")]),
    st.floats(allow_nan=True, allow_infinity=True),
)
dims = st.one_of(
    st.sampled_from([0, 1, 2, 3, 8, 64, 63, 65, 4096, 4097, -1, -64, 2**31, 2**62, INT64[1]]),
    st.integers(-5, 70),
)
shapes = st.one_of(
    st.lists(dims, max_size=4),
    st.tuples(st.integers(0, 6), st.sampled_from([2, 3, 8, 64])).map(list),
    st.just([1] * 300),
)
DTYPE_SIZES = {0: 1, 1: 4, 2: 8, 3: 2, 4: 8, 5: 1}
FILLS = [0.0, 1.0, 8.0, -3.5, 1e30, 3e38, float("nan"), float("inf")]


@st.composite
def payloads(draw: Any, shape: list[int], itemsize: int) -> bytes:
    """Bytes for a tensor: the right count of one value (often), or something else."""
    count = 1
    for d in shape:
        count *= max(d, 0)
        if count > 300_000:
            break
    kind = draw(st.sampled_from(["exact", "exact", "exact", "short", "long", "random"]))
    if kind == "random" or count > 300_000:
        return draw(st.binary(max_size=96))
    n = count * itemsize + {"exact": 0, "short": -1, "long": itemsize}[kind]
    fill = draw(st.sampled_from(FILLS))
    base = np.full(-(-max(n, 0) // 4), fill, np.float32).tobytes()
    return base[: max(n, 0)]


WIDTHS = [64, 8, 3, 2]  # digits' features; cond's features, condition and latent widths
NUMPY_DTYPES = {1: "<f4", 2: "<f8", 3: "<f2", 4: "<i8"}


@st.composite
def matrices(draw: Any) -> vae_pb2.Tensor:
    """A well-formed [n, width] numeric tensor of finite values: the served path."""
    dtype = draw(st.sampled_from([1, 1, 1, 2, 3, 4]))
    n = draw(st.one_of(st.integers(0, 6), st.sampled_from([64, 4096])))
    width = draw(st.sampled_from(WIDTHS))
    fill = draw(st.sampled_from([0.0, 1.0, 8.0, -3.5, 15.0]))
    data = np.full((n, width), fill, NUMPY_DTYPES[dtype]).tobytes()
    return vae_pb2.Tensor(dtype=dtype, shape=[n, width], data=data)


@st.composite
def odd_tensors(draw: Any) -> vae_pb2.Tensor:
    """A vae.v1.Tensor: any dtype number, any shape, bytes that often match."""
    dtype = draw(st.one_of(st.sampled_from([1, 1, 1, 2, 3, 4, 5, 0]), st.integers(-3, 200)))
    shape = draw(shapes)
    data = draw(payloads(shape, DTYPE_SIZES.get(dtype, 4)))
    return vae_pb2.Tensor(dtype=dtype, shape=shape, data=data)


def tensors() -> st.SearchStrategy[vae_pb2.Tensor]:
    """Well-formed matrices half of the time, anything else otherwise."""
    return st.one_of(matrices(), odd_tensors())


maybe_tensors = st.one_of(st.none(), st.none(), st.none(), tensors())
model_refs = st.one_of(
    st.none(),
    st.none(),
    st.just(vae_pb2.ModelRef(name="digits")),
    st.builds(vae_pb2.ModelRef, name=names, version=st.one_of(st.just(0), int64s)),
)


def _set(msg: Any, **fields: Any) -> Any:
    for k, v in fields.items():
        if v is None:
            continue
        if isinstance(v, (vae_pb2.Tensor, vae_pb2.ModelRef)):
            getattr(msg, k).CopyFrom(v)
        else:
            setattr(msg, k, v)
    return msg


# ---- vae.v1 ------------------------------------------------------------------------------
encode_requests = st.builds(
    lambda m, r, c, s, seed: _set(
        vae_pb2.EncodeRequest(), model=m, rows=r, condition=c, sample=s, seed=seed
    ),
    model_refs,
    tensors(),
    maybe_tensors,
    st.booleans(),
    uint64s,
)
decode_requests = st.builds(
    lambda m, z, c: _set(vae_pb2.DecodeRequest(), model=m, z=z, condition=c),
    model_refs,
    tensors(),
    maybe_tensors,
)
sample_requests = st.builds(
    lambda m, n, seed, c: _set(vae_pb2.SampleRequest(), model=m, n=n, seed=seed, condition=c),
    model_refs,
    st.one_of(st.sampled_from([0, 1, 2, 64, 4096, 4097, UINT32_MAX]), st.integers(0, 50)),
    uint64s,
    maybe_tensors,
)
score_requests = st.builds(
    lambda m, bid, r, c, ids, off, kl, score, thr, k, seed: _set(
        vae_pb2.ScoreRequest(),
        model=m,
        batch_id=bid,
        rows=r,
        condition=c,
        row_ids=ids,
        start_offset=off,
        include_kl_per_dim=kl,
        score=score,
        threshold=thr,
        iw_samples=k,
        seed=seed,
    ),
    model_refs,
    st.text(max_size=10),
    tensors(),
    maybe_tensors,
    maybe_tensors,
    int64s,
    st.booleans(),
    st.one_of(st.sampled_from([0, 1, 2, 3]), st.integers(-5, 100)),
    st.one_of(st.none(), floats),
    st.sampled_from([0, 0, 1, 2, 3, 257, 100_000, UINT32_MAX]),
    uint64s,
)
score_streams = st.lists(score_requests, min_size=1, max_size=4)

# ---- KServe v2 ---------------------------------------------------------------------------
DATATYPES = ["FP32", "FP32", "FP64", "FP16", "INT64", "INT32", "BOOL", "BYTES", "UINT8", "", "x"]
DT_SIZES = {"FP32": 4, "FP64": 8, "FP16": 2, "INT64": 8, "INT32": 4, "BOOL": 1, "UINT8": 1}
versions = st.one_of(
    st.sampled_from(["", "1", "0", "2", "01", "²", "١", " 1", "-1", "1.0", "9" * 30, "x"]),
    st.text(max_size=8),
)
params = st.one_of(
    st.builds(lambda v: kpb.InferParameter(bool_param=v), st.booleans()),
    st.builds(lambda v: kpb.InferParameter(int64_param=v), int64s),
    st.builds(
        lambda v: kpb.InferParameter(string_param=v), st.sampled_from(["kl", "neg_elbo", "x"])
    ),
    st.builds(lambda v: kpb.InferParameter(double_param=v), floats),
    st.builds(lambda v: kpb.InferParameter(uint64_param=v), uint64s),
    st.just(kpb.InferParameter()),
)
param_maps = st.dictionaries(
    st.sampled_from(["score", "threshold", "iw_samples", "seed", "binary_data_output", "other"]),
    params,
    max_size=4,
)


@st.composite
def infer_inputs(draw: Any) -> tuple[kpb.ModelInferRequest.InferInputTensor, bytes | None]:
    """One input tensor and its raw bytes (None: typed contents)."""
    name = draw(st.sampled_from(["x", "x", "z", "cond", "y", ""]))
    if draw(st.booleans()):  # well-formed raw FP32 rows: the served path
        n, width = draw(st.integers(0, 6)), draw(st.sampled_from(WIDTHS))
        t = kpb.ModelInferRequest.InferInputTensor(name=name, datatype="FP32", shape=[n, width])
        return t, np.full((n, width), draw(st.sampled_from([0.0, 2.0, 9.0])), "<f4").tobytes()
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(shapes)
    t = kpb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if draw(st.booleans()):
        return t, draw(payloads(shape, DT_SIZES.get(datatype, 4)))
    count = 1
    for d in shape:
        count *= max(d, 0)
    count = min(count, 2000) + draw(st.sampled_from([0, 0, 0, 1, -1]))
    value = draw(floats)
    field_name = draw(st.sampled_from(["fp32_contents", "fp64_contents", "int64_contents"]))
    if field_name == "int64_contents":
        t.contents.int64_contents.extend([draw(int64s)] * max(count, 0))
    else:
        getattr(t.contents, field_name).extend([value] * max(count, 0))
    return t, None


@st.composite
def infer_requests(draw: Any) -> kpb.ModelInferRequest:
    """A ModelInferRequest: any name, version, parameters, inputs and requested outputs."""
    name = draw(st.one_of(st.sampled_from(["digits", "digits", "cond"]), names))
    version = draw(st.one_of(st.just(""), versions))
    req = kpb.ModelInferRequest(
        model_name=name, model_version=version, id=draw(st.text(max_size=8))
    )
    for k, v in draw(param_maps).items():
        req.parameters[k].CopyFrom(v)
    inputs = draw(st.lists(infer_inputs(), min_size=1, max_size=3))
    raw_mode = draw(st.sampled_from(["all", "none", "mixed"]))
    for t, raw in inputs:
        req.inputs.append(t)
        if raw_mode == "all" or (raw_mode == "mixed" and raw is not None):
            req.raw_input_contents.append(raw if raw is not None else b"")
    for name in draw(
        st.lists(st.sampled_from(["kl", "p_value", "iw_nll", "mu", "nope"]), max_size=3)
    ):
        req.outputs.add(name=name)
    return req


@st.composite
def served_infer_requests(draw: Any) -> kpb.ModelInferRequest:
    """A well-formed request to digits (scorer, encoder or decoder), raw or typed: the
    served path, with parameters that may still be out of range."""
    graph = draw(st.sampled_from(["digits", "digits.encoder", "digits.decoder"]))
    req = kpb.ModelInferRequest(model_name=graph, model_version=draw(st.sampled_from(["", "1"])))
    n = draw(st.integers(0, 5))
    width = 8 if graph == "digits.decoder" else 64
    x = np.full((n, width), draw(st.sampled_from([0.0, 3.0, 16.0])), np.float32)
    t = req.inputs.add(name="z" if width == 8 else "x", datatype="FP32", shape=[n, width])
    if draw(st.booleans()):
        req.raw_input_contents.append(x.tobytes())
    else:
        t.contents.fp32_contents.extend(x.ravel().tolist())
    if graph == "digits":
        for k, v in draw(
            st.dictionaries(
                st.sampled_from(["score", "iw_samples", "seed", "threshold"]),
                st.one_of(
                    st.builds(
                        lambda s: kpb.InferParameter(string_param=s),
                        st.sampled_from(["kl", "recon_nll", "neg_elbo", "x"]),
                    ),
                    st.builds(lambda i: kpb.InferParameter(int64_param=i), st.integers(-1, 3)),
                    st.builds(lambda d: kpb.InferParameter(double_param=d), floats),
                ),
                max_size=2,
            )
        ).items():
            req.parameters[k].CopyFrom(v)
    return req


any_infer_requests = st.one_of(served_infer_requests(), infer_requests())
infer_streams = st.lists(any_infer_requests, min_size=1, max_size=4)

# ---- cases -------------------------------------------------------------------------------
raw_bytes = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"\xff\xff", b"\x0a\xff\xff\xff", b"\x12\x05abc", b"\x08" * 11]),
)


@dataclass
class Case:
    """One call: an RPC and its request (a message, a list for streams, or raw bytes)."""

    rpc: str
    request: Any
    raw: bool = False


CASES = {
    "Encode": encode_requests,
    "Decode": decode_requests,
    "Sample": sample_requests,
    "Score": score_streams,
    "ModelInfer": any_infer_requests,
    "ModelStreamInfer": infer_streams,
}


def cases(rpc: str) -> st.SearchStrategy[Case]:
    """Messages for `rpc`, and now and then raw bytes that may not parse."""
    messages = CASES[rpc].map(lambda r: Case(rpc, r))
    raw = raw_bytes.map(lambda b: Case(rpc, [b] if rpc in STREAMING else b, raw=True))
    return st.one_of(messages, messages, messages, raw)


def any_case() -> st.SearchStrategy[Case]:
    """A case for any of the six RPCs."""
    return st.one_of(*(cases(rpc) for rpc in CASES))


# ---- sending -----------------------------------------------------------------------------
@dataclass
class Outcome:
    """The status codes one case got (the call's last), how long it took."""

    codes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bad(self) -> list[str]:
        return [c for c in self.codes if c in BAD_CODES]


def _in_band(rpc: str, response: bytes) -> str:
    if rpc == "Score":
        msg = vae_pb2.ScoreResponse.FromString(response)
        return grpc.StatusCode.OK.name if not msg.HasField("error") else _code_name(msg.error.code)
    msg = kpb.ModelStreamInferResponse.FromString(response)
    return msg.error_message.split(":", 1)[0] if msg.error_message else "OK"


def _code_name(value: int) -> str:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code.name
    return f"code {value}"


def send(channel: grpc.Channel, case: Case, timeout: float = CALL_TIMEOUT_S) -> Outcome:
    """Make the case's call on `channel`; every code it got, in-stream answers first."""
    path, _ = METHODS[case.rpc]
    out = Outcome()
    started = time.perf_counter()
    try:
        if case.rpc in STREAMING:
            messages = case.request if case.raw else [m.SerializeToString() for m in case.request]
            call = channel.stream_stream(path)(iter(messages), timeout=timeout)
            for response in call:
                out.codes.append(_in_band(case.rpc, response))
        else:
            data = case.request if case.raw else case.request.SerializeToString()
            channel.unary_unary(path)(data, timeout=timeout)
        out.codes.append("OK")
    except grpc.RpcError as exc:
        out.codes.append(exc.code().name)
    out.seconds = time.perf_counter() - started
    return out
