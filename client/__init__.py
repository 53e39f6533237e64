"""vaeserve.client: the Python client library and the `vae-client` CLI (no torch, no onnxruntime).

from vaeserve.client import VaeClient
with VaeClient("localhost:50051") as client:
    for result in client.score(batches, model="digits"):
        ...
"""

from vaeserve.client.batches import Batch
from vaeserve.client.errors import VaeClientError
from vaeserve.client.library import VaeClient
from vaeserve.client.models import ModelInfo, ModelSummary, parse_model
from vaeserve.client.options import ConnectionOptions
from vaeserve.client.results import EncodeResult, SampleResult, ScoreResult

__all__ = [
    "Batch",
    "ConnectionOptions",
    "EncodeResult",
    "ModelInfo",
    "ModelSummary",
    "SampleResult",
    "ScoreResult",
    "VaeClient",
    "VaeClientError",
    "parse_model",
]
