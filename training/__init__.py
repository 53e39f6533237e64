"""Train a VAE on tabular data: `train(TrainConfig(...))` or the `vae-train` CLI."""

from vaeserve.training.config import TrainConfig
from vaeserve.training.data import DataError, Dataset, load_dataset, one_class_split
from vaeserve.training.loop import PosteriorCollapseWarning, TrainResult, load_model, train

__all__ = [
    "DataError",
    "Dataset",
    "PosteriorCollapseWarning",
    "TrainConfig",
    "TrainResult",
    "load_dataset",
    "load_model",
    "one_class_split",
    "train",
]
