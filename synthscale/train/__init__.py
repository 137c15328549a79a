"""The FLOPs-budgeted generator trainer: `train` a run, `list_checkpoints` of a run, `load_generator` to sample."""

from synthscale.train.checkpoint import CheckpointInfo, CorruptCheckpoint
from synthscale.train.loop import (
    CheckpointWriteFailed,
    Generator,
    NonFiniteLoss,
    TrainingStopped,
    list_checkpoints,
    load_generator,
    milestone_grid,
    train,
)

__all__ = [
    "train",
    "list_checkpoints",
    "load_generator",
    "Generator",
    "CheckpointInfo",
    "CorruptCheckpoint",
    "TrainingStopped",
    "NonFiniteLoss",
    "CheckpointWriteFailed",
    "milestone_grid",
]
