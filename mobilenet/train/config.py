"""The one typed configuration of a training run, filled by the command line, written beside the run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults train a V1 on the embedded digits.

    `batch_size` and `lr` are per process; under torchrun the global batch is
    `batch_size * world_size` (scale `lr` with it, as the linear scaling rule says).
    """

    out: str = "runs/demo"
    # model
    model: str = "mobilenet_v1"
    width: float = 1.0
    small_input: bool = False
    dropout: float | None = None  # None: the model's default (V1 0, V2 0.2)
    model_options: dict | None = None  # further model arguments (activation, bn_eps, padding)
    pretrained: str | None = None  # start from this checkpoint; its architecture replaces model/width
    freeze_epochs: int = 0  # train only the classifier for this many first epochs
    mean: list[float] | None = None  # input normalisation; None: the dataset's (a pretrained model brings its own)
    std: list[float] | None = None
    # data
    data: str = "digits"
    data_root: str | None = None
    download: bool = False
    classes: list[str] | None = None
    resolution: int | None = None  # None: the dataset's own (32 for digits and CIFAR, 224 for folders)
    workers: int = 2
    # optimisation
    epochs: int = 15
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd (Nesterov momentum) or rmsprop (the papers')
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    depthwise_decay: bool = False  # the V1 paper: little or no weight decay on depthwise filters
    schedule: str = "cosine"  # cosine (with warm-up) or exponential (x lr_gamma per epoch, the papers')
    lr_gamma: float = 0.98
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # > 0: evaluate and keep an exponential moving average of the weights
    # machine
    channels_last: bool = True
    amp: str = "auto"  # auto: bfloat16 autocast on CUDA, off on CPU; on; off
    compile: bool = False
    sync_bn: bool = False  # synchronise BatchNorm statistics across processes (GPUs only, PyTorch's SyncBatchNorm)
    freeze_bn: bool = False  # BatchNorm in evaluation mode while training: fixed statistics (fine-tuning, small batches)
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def validate(self) -> TrainConfig:
        """Check the values a model and dataset cannot check for themselves."""
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.optimizer in ("sgd", "rmsprop"), f"optimizer must be sgd or rmsprop, got {self.optimizer!r}"),
            (self.schedule in ("cosine", "exponential"), f"schedule must be cosine or exponential, got {self.schedule!r}"),
            (0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1), got {self.label_smoothing}"),
            (0 <= self.ema_decay < 1, f"EMA decay must be in [0, 1), got {self.ema_decay}"),
            (self.amp in ("auto", "on", "off"), f"amp must be auto, on or off, got {self.amp!r}"),
            (self.warmup_epochs >= 0, f"warm-up epochs must be >= 0, got {self.warmup_epochs}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (0 <= self.freeze_epochs, f"freeze epochs must be >= 0, got {self.freeze_epochs}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self
