"""Surrogate stage: a small SASRec trained on all training data (DEALRec Sec. 3.2)."""

from recprune.surrogate.samples import SurrogateSamples, build_samples
from recprune.surrogate.sasrec import SASRec, SASRecConfig, sequence_losses
from recprune.surrogate.trainer import (SurrogateTrainConfig, TrainResult, evaluate, load_surrogate,
                                        save_surrogate, train_surrogate)

__all__ = ["SASRec", "SASRecConfig", "SurrogateSamples", "SurrogateTrainConfig", "TrainResult",
           "build_samples", "evaluate", "load_surrogate", "save_surrogate", "sequence_losses",
           "train_surrogate"]
