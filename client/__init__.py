"""vaeserve.client: the Python client library and the `vae-client` CLI (no torch, no onnxruntime).

from vaeserve.client import VaeClient
with VaeClient("localhost:50051") as client:
    for result in client.score(batches, model="digits"):
        ...
"""

from vaeserve.client.errors import VaeClientError
from vaeserve.client.library import (
    Batch,
    EncodeResult,
    ModelInfo,
    ModelSummary,
    SampleResult,
    ScoreResult,
    VaeClient,
    parse_model,
)

__all__ = [
    "Batch",
    "EncodeResult",
    "ModelInfo",
    "ModelSummary",
    "SampleResult",
    "ScoreResult",
    "VaeClient",
    "VaeClientError",
    "parse_model",
]
