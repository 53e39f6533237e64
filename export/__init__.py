"""Export a trained run to ONNX graphs in a versioned model directory."""

from vaeserve.export.parity import ParityError, check_parity
from vaeserve.export.writer import ExportResult, export_model

__all__ = ["ExportResult", "ParityError", "check_parity", "export_model"]
