"""The FLOPs-budgeted generator trainer: `train` a run, `list_checkpoints` of a run, `load_generator` to sample
(and `.generate` images from prompts)."""

from synthscale.train.checkpoint import CheckpointInfo, CorruptCheckpoint
from synthscale.train.generator import (
    PromptCheck,
    TrainedGenerator,
    list_checkpoints,
    load_generator,
    milestone_checkpoints,
    pick_milestone,
)
from synthscale.train.loop import CheckpointWriteFailed, NonFiniteLoss, TrainingStopped, milestone_grid, train

__all__ = [
    "train",
    "list_checkpoints",
    "load_generator",
    "TrainedGenerator",
    "PromptCheck",
    "milestone_checkpoints",
    "pick_milestone",
    "CheckpointInfo",
    "CorruptCheckpoint",
    "TrainingStopped",
    "NonFiniteLoss",
    "CheckpointWriteFailed",
    "milestone_grid",
]
