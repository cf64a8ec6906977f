"""Training: one typed configuration, optimizer groups and schedule, and the loop."""

from mobilenet.train.config import TrainConfig
from mobilenet.train.distributed import Distributed, from_environment
from mobilenet.train.loop import Run, TrainingError, train
from mobilenet.train.optim import build_optimizer, learning_rate, parameter_groups

__all__ = ["Distributed", "Run", "from_environment", "TrainConfig", "TrainingError", "build_optimizer", "learning_rate", "parameter_groups", "train"]
