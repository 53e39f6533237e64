"""A run's data as tensors: load, validate, select and split the rows, one-hot the condition
labels and fit standardisation on the train split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from vaeserve.training import data as data_mod
from vaeserve.training.config import TrainConfig


@dataclass
class Prepared:
    """Tensors and metadata of a run's train and validation splits."""

    x_train: torch.Tensor
    x_val: torch.Tensor
    c_train: torch.Tensor | None
    c_val: torch.Tensor | None
    feature_names: list[str]
    classes: list[str] | None
    mean: torch.Tensor
    scale: torch.Tensor
    fingerprint: str

    @property
    def input_dim(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def cond_dim(self) -> int:
        """Width of the one-hot condition; 0 for an unconditional model."""
        return 0 if self.classes is None else len(self.classes)


def prepare(config: TrainConfig) -> Prepared:
    """Load, validate, select and split the data; fit standardisation on the train split."""
    ds = data_mod.load_dataset(config.data, config.columns, config.label_column, config.id_column)
    ds = data_mod.check_finite(ds, config.drop_invalid)
    if config.normal_label is not None:
        ds = data_mod.select_label(ds, config.normal_label)
    if len(ds) < 4:
        raise data_mod.DataError(f"{len(ds)} rows are too few to train on")
    train_ds, val_ds = data_mod.split(ds, config.val_fraction, config.seed)
    if config.likelihood == "bernoulli" and (ds.x.min() < 0 or ds.x.max() > 1):
        raise data_mod.DataError(
            "the bernoulli likelihood needs features in [0, 1]; rescale the data or use "
            "--likelihood gaussian"
        )
    classes = None
    c_train = c_val = None
    if config.condition_on_label:
        if ds.labels is None:
            raise data_mod.DataError("--condition-on-label needs a label column (--label-column)")
        classes = sorted(set(ds.labels.tolist()))
        lookup = {c: i for i, c in enumerate(classes)}
        eye = np.eye(len(classes), dtype=np.float32)
        c_train = torch.from_numpy(eye[[lookup[v] for v in train_ds.labels]])
        c_val = torch.from_numpy(eye[[lookup[v] for v in val_ds.labels]])
    x_train = torch.from_numpy(np.ascontiguousarray(train_ds.x, dtype=np.float32))
    mean = x_train.mean(0)
    std = x_train.std(0, unbiased=False)
    scale = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant features pass as is
    fingerprint = hashlib.sha256(train_ds.x.tobytes() + val_ds.x.tobytes()).hexdigest()
    return Prepared(
        x_train,
        torch.from_numpy(np.ascontiguousarray(val_ds.x)),
        c_train,
        c_val,
        ds.feature_names,
        classes,
        mean,
        scale,
        fingerprint,
    )
