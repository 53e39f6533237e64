"""Conditions of conditional models from class labels: one-hot rows, for one label given on the
command line or for a label column read with the input."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from vaeserve.client.errors import VaeClientError
from vaeserve.client.models import ModelInfo

#: Labels of a chunk's aux table -> (one-hot rows, mask of the known labels).
ConditionEncoder = Callable[[pa.Table], tuple[np.ndarray, np.ndarray]]


def one_hot(labels: Any, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """One-hot float32 rows of labels (compared as text) and a mask of the known ones."""
    index = {str(c): i for i, c in enumerate(classes)}
    values = labels.to_pylist() if hasattr(labels, "to_pylist") else list(labels)
    idx = np.array([index.get(str(v), -1) if v is not None else -1 for v in values], np.int64)
    out = np.zeros((len(idx), len(classes)), np.float32)
    known = idx >= 0
    out[np.flatnonzero(known), idx[known]] = 1.0
    return out, known


def condition_rows(info: ModelInfo, label: str | None) -> np.ndarray | None:
    """A [1, cond_dim] one-hot row for a class label; None for unconditional models."""
    if info.cond_dim == 0:
        if label is not None:
            raise VaeClientError(f"model {info.name}:{info.version} is not conditional")
        return None
    if label is None:
        raise VaeClientError(
            f"model {info.name}:{info.version} is conditional; pass --condition LABEL "
            f"(one of {info.condition_classes})"
        )
    if not info.condition_classes:
        raise VaeClientError("the model's condition has no class labels; use the library")
    onehot, known = one_hot([label], info.condition_classes)
    if not known[0]:
        raise VaeClientError(
            f"condition {label!r} is not one of the model's classes {info.condition_classes}"
        )
    return onehot


def condition_encoder(info: ModelInfo, column: str | None) -> ConditionEncoder | None:
    """Label column -> one-hot rows for a conditional model; None for an unconditional one."""
    if info.cond_dim == 0:
        if column:
            raise VaeClientError(
                f"model {info.name}:{info.version} is not conditional; drop --condition-column"
            )
        return None
    if not column:
        raise VaeClientError(
            f"model {info.name}:{info.version} is conditional (classes "
            f"{info.condition_classes}); name the label column with --condition-column"
        )
    if not info.condition_classes:
        raise VaeClientError(
            f"model {info.name}:{info.version} takes a numeric condition without class labels; "
            "score it with the Python library (VaeClient.score with Batch(condition=...))"
        )
    return lambda aux: one_hot(aux.column(column), info.condition_classes)
