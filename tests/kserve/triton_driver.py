"""Drive a KServe v2 server with tritonclient.grpc; run with .venv-triton/bin/python.

tritonclient pins protobuf<7 while vaeserve's stubs need protobuf>=7, so this script runs in
its own virtual environment (scripts/bootstrap.sh makes .venv-triton) and imports nothing
from vaeserve. It reads a JSON plan on stdin and prints one JSON object with a result per step:

    {"url": "127.0.0.1:PORT", "ssl": false, "root_certificates": null,
     "private_key": null, "certificate_chain": null, "headers": {},
     "steps": [{"op": "live"}, {"op": "ready"}, {"op": "server_metadata"},
               {"op": "model_ready", "model": "digits", "version": ""},
               {"op": "model_metadata", "model": "digits.encoder", "version": ""},
               {"op": "infer", "model": "digits", "version": "", "id": "r1",
                "inputs": [{"name": "x", "datatype": "FP32", "npy": "rows.npy"}],
                "outputs": ["kl"] or null, "parameters": {"score": "kl"}},
               {"op": "stream", "requests": [<infer steps>]}]}

An infer result is {"model_name", "model_version", "id", "parameters", "outputs": {name:
{"datatype", "shape", "data"}}}; a failed step is {"error": {"status", "message"}}.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

NUMPY = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
         "INT32": np.int32}  # fmt: skip


def _error(exc: InferenceServerException) -> dict[str, Any]:
    return {"error": {"status": str(exc.status()), "message": exc.message()}}


def _inputs(step: dict[str, Any]) -> list[grpcclient.InferInput]:
    out = []
    for spec in step["inputs"]:
        arr = np.load(spec["npy"]).astype(NUMPY[spec["datatype"]])
        inp = grpcclient.InferInput(spec["name"], list(arr.shape), spec["datatype"])
        inp.set_data_from_numpy(arr)
        out.append(inp)
    return out


def _outputs(step: dict[str, Any]) -> list[grpcclient.InferRequestedOutput] | None:
    names = step.get("outputs")
    return None if names is None else [grpcclient.InferRequestedOutput(n) for n in names]


def _param(p: Any) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def _result(result: Any) -> dict[str, Any]:
    resp = result.get_response()
    outputs = {}
    for o in resp.outputs:
        arr = result.as_numpy(o.name)
        outputs[o.name] = {"datatype": o.datatype, "shape": list(o.shape), "data": arr.tolist()}
    return {
        "model_name": resp.model_name,
        "model_version": resp.model_version,
        "id": resp.id,
        "parameters": {k: _param(v) for k, v in resp.parameters.items()},
        "outputs": outputs,
    }


def _infer(client: grpcclient.InferenceServerClient, step: dict[str, Any], headers: dict) -> Any:
    try:
        result = client.infer(
            step["model"],
            _inputs(step),
            model_version=step.get("version", ""),
            outputs=_outputs(step),
            request_id=step.get("id", ""),
            parameters=step.get("parameters"),
            headers=headers,
        )
    except InferenceServerException as exc:
        return _error(exc)
    return _result(result)


def _stream(client: grpcclient.InferenceServerClient, step: dict[str, Any], headers: dict) -> Any:
    """Send every request on one stream, then collect one callback per request, in order."""
    got: list[dict[str, Any]] = []
    done = threading.Event()
    want = len(step["requests"])

    def callback(result: Any, error: InferenceServerException | None) -> None:
        got.append(_error(error) if error is not None else _result(result))
        if len(got) >= want:
            done.set()

    try:
        client.start_stream(callback, headers=headers)
    except InferenceServerException as exc:
        return _error(exc)
    for req in step["requests"]:
        client.async_stream_infer(
            req["model"],
            _inputs(req),
            model_version=req.get("version", ""),
            outputs=_outputs(req),
            request_id=req.get("id", ""),
            parameters=req.get("parameters"),
        )
    finished = done.wait(step.get("timeout", 60))
    client.stop_stream()
    return {"responses": got, "complete": finished}


def main() -> int:
    """Run the plan on stdin and print the results as JSON."""
    plan = json.load(sys.stdin)
    headers = plan.get("headers") or {}
    client = grpcclient.InferenceServerClient(
        plan["url"],
        ssl=plan.get("ssl", False),
        root_certificates=plan.get("root_certificates"),
        private_key=plan.get("private_key"),
        certificate_chain=plan.get("certificate_chain"),
    )
    results: list[Any] = []
    for step in plan["steps"]:
        op = step["op"]
        try:
            if op == "live":
                results.append(client.is_server_live(headers=headers))
            elif op == "ready":
                results.append(client.is_server_ready(headers=headers))
            elif op == "model_ready":
                results.append(
                    client.is_model_ready(step["model"], step.get("version", ""), headers=headers)
                )
            elif op == "server_metadata":
                results.append(client.get_server_metadata(headers=headers, as_json=True))
            elif op == "model_metadata":
                results.append(
                    client.get_model_metadata(
                        step["model"], step.get("version", ""), headers=headers, as_json=True
                    )
                )
            elif op == "infer":
                results.append(_infer(client, step, headers))
            elif op == "stream":
                results.append(_stream(client, step, headers))
            else:
                raise SystemExit(f"unknown op {op!r}")
        except InferenceServerException as exc:
            results.append(_error(exc))
    client.close()
    json.dump({"results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
