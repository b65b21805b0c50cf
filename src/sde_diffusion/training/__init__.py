"""Training: the denoising score-matching loss, the trainer, EMA, checkpoints and data-parallel helpers."""

from .checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from .classifier import ClassifierLoss
from .distributed import DistributedContext, init_distributed, shutdown
from .ema import EMA
from .guard import NonFiniteTrainingError
from .interrupt import TrainingInterrupted
from .losses import WEIGHTINGS, DSMLoss, eps_error_scale
from .trainer import ShardedBatches, Trainer, derive_seed

__all__ = [
    "CheckpointError", "ClassifierLoss", "DSMLoss", "DistributedContext", "EMA", "NonFiniteTrainingError", "ShardedBatches", "Trainer", "WEIGHTINGS", "derive_seed",
    "eps_error_scale", "init_distributed", "list_checkpoints", "load_checkpoint", "save_checkpoint", "shutdown", "TrainingInterrupted",
]
