"""Language models on text: :class:`Trainer` and :class:`TrainConfig`, checkpoints,
sampling and evaluation. The ``lstmkit train | sample | evaluate`` commands
(:mod:`lstmkit.cli.train`) are a thin layer over this package."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .model import LanguageModel
from .sample import evaluate_text, generate, load_run
from .trainer import (
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
    TrainResult,
    learning_rate,
    resume_config,
)

__all__ = ["Trainer", "TrainConfig", "TrainResult", "TrainingDiverged", "TrainingInterrupted",
           "LanguageModel", "CheckpointError", "load_checkpoint", "save_checkpoint",
           "generate", "load_run", "evaluate_text", "learning_rate", "resume_config"]
