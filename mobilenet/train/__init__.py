"""Training: one typed configuration, optimizer groups and schedule, and the loop."""

from mobilenet.train.config import TrainConfig
from mobilenet.train.distributed import Distributed, from_environment
from mobilenet.train.loop import Run, TrainingError, adapt_stem, resolve_pretrained, train
from mobilenet.train.optim import build_optimizer, learning_rate, parameter_groups

__all__ = ["Distributed", "Run", "TrainConfig", "TrainingError", "adapt_stem", "build_optimizer", "from_environment",
           "learning_rate", "parameter_groups", "resolve_pretrained", "train"]
