"""Training: the denoising score-matching loss, the trainer, EMA, checkpoints and data-parallel helpers."""

from .classifier import ClassifierLoss
from .checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from .distributed import DistributedContext, init_distributed, shutdown
from .ema import EMA
from .losses import WEIGHTINGS, DSMLoss, eps_error_scale
from .trainer import ShardedBatches, Trainer, derive_seed

__all__ = [
    "CheckpointError", "ClassifierLoss", "DSMLoss", "DistributedContext", "EMA", "ShardedBatches", "Trainer", "WEIGHTINGS", "derive_seed",
    "eps_error_scale", "init_distributed", "list_checkpoints", "load_checkpoint", "save_checkpoint", "shutdown",
]
