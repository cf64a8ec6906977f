"""The one typed configuration of a training run, filled by the command line, written beside the run."""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from mobilenet.checks import check_resolution, comma_list, dataclass_fields
from mobilenet.data.load import NAMED, default_root
from mobilenet.models.layers import check_width



def option(default, help: str | None = None, *, flag: str | None = None, choices: tuple | None = None,
           parse=None, shown: str | None = None):
    """A TrainConfig field and, when it has `help`, its command-line option: `--name-with-dashes`
    (or `flag`), parsed by `parse` or the field's type, a switch for a bool. `mobilenet train
    --help` shows the default from here (or `shown`), so each default is stated once."""
    metadata = {"help": help, "flag": flag, "choices": choices, "parse": parse, "shown": shown}
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults train a V1 on the embedded digits.

    `batch_size` and `lr` are per process; under torchrun the global batch is
    `batch_size * world_size` (scale `lr` with it, as the linear scaling rule says).
    """

    out: str = "runs/demo"
    # model
    model: str = option("mobilenet_v1", "model name")
    width: float = option(1.0, "width multiplier alpha in (0, 4]", parse=check_width)
    small_input: bool | None = option(None, "the 32x32 (CIFAR) variant: less early down-sampling",
                                      shown="on for an image folder of images 64 pixels or smaller, else off")
    dropout: float | None = option(None, "dropout before the classifier", shown="the model's: V1 0, V2 0.2")
    model_options: dict | None = None  # further model arguments (activation, bn_eps, padding)
    pretrained: str | None = option(None, "start from this checkpoint (e.g. from `mobilenet convert`): its "
                                          "architecture is used, and a classifier for another number of classes "
                                          "is replaced")
    freeze_epochs: int = option(0, "train only the classifier for this many first epochs")
    mean: list[float] | None = None  # input normalisation; None: the dataset's (a pretrained model brings its own)
    std: list[float] | None = None
    # data
    data: str = option("digits", "digits, cifar10, mnist, fashion-mnist, kmnist, a CIFAR-10 archive or folder, "
                                 "or an image folder")
    data_root: str | None = option(None, "where named datasets are looked up and downloaded",
                                   shown="$MOBILENET_DATA or ~/.cache/mobilenet")
    download: bool = option(False, "download a named dataset (official files, checksums) if it is not found")
    classes: list[str] | None = option(None, "keep these classes, e.g. airplane,bird", parse=comma_list, shown="all")
    resolution: int | None = option(None, "input side in pixels", parse=int, shown="the dataset's: 32 for digits "
                                                                                   "and CIFAR, 28 for the MNIST "
                                                                                   "family, a folder's own images' "
                                                                                   "where they are small, else 224")
    in_chans: int | None = option(None, "input channels: 1 (grayscale) or 3 (RGB); images are converted to them",
                                  parse=int, shown="the data's own: 1 for the MNIST family and grey folders, else 3")
    workers: int = option(2, "image decoding processes for image folders")
    val_split: float = option(0.0, "hold out this fraction of each class of the training split and evaluate on it "
                                   "instead of the test split: tune without looking at the test split")
    # optimisation
    epochs: int = option(15, "epochs")
    batch_size: int = option(128, "images per step and process")
    optimizer: str = option("sgd", "sgd (Nesterov momentum) or rmsprop (the papers')", choices=("sgd", "rmsprop"))
    lr: float = option(0.1, "peak learning rate")
    momentum: float = option(0.9, "momentum")
    weight_decay: float = option(5e-4, "weight decay, not applied to depthwise, BatchNorm and bias")
    depthwise_decay: bool = option(False, "apply weight decay to depthwise filters too (the V1 paper: little or none)")
    schedule: str = option("cosine", "cosine (with warm-up) or exponential (x lr-gamma per epoch, the papers')",
                           choices=("cosine", "exponential"))
    lr_gamma: float = option(0.98, "per-epoch decay of the exponential schedule")
    warmup_epochs: float = option(1.0, "linear warm-up epochs")
    label_smoothing: float = option(0.0, "label smoothing")
    random_erasing: float = option(0.0, "probability of erasing a random rectangle of each training image to the "
                                        "mean (Zhong et al. 2017; timm's --reprob)")
    min_resolution: int | None = option(None, "progressive resizing: train at this side first, growing linearly to "
                                              "the resolution between --resize-start and --resize-end (FFCV's "
                                              "schedule); evaluation is always at the resolution", parse=int,
                                        shown="off")
    resize_start: float = option(0.75, "fraction of the epochs after which progressive resizing starts to grow")
    resize_end: float = option(0.85, "fraction of the epochs by which it reaches the resolution")
    ema_decay: float = option(0.0, "keep and evaluate an exponential moving average of the weights, e.g. 0.999")
    eval_every: int = option(1, "evaluate on the held-out split every N epochs, and after the last")
    tta_flip: bool = option(False, "evaluate each image and its mirror image, averaging their logits (test-time "
                                   "augmentation, as airbench counts it; for data that trains mirrored)")
    # machine
    channels_last: bool = option(True, "keep NCHW memory format (channels_last is faster on CPU)",
                                 flag="--no-channels-last")
    amp: str = option("auto", "bfloat16 autocast: auto (on CUDA; on CPU where a short probe finds "
                                  "the step faster), on, off", choices=("auto", "on", "off"))
    fused_bn: bool = option(True, "use PyTorch's own BatchNorm, activation and convolutions instead of the "
                                  "CPU kernels of mobilenet.fused", flag="--no-fused-bn")
    compile: bool = option(False, "torch.compile the model")
    sync_bn: bool = option(False, "synchronise BatchNorm statistics across processes (GPUs only, PyTorch's "
                                  "SyncBatchNorm)")
    freeze_bn: bool = option(False, "keep BatchNorm in evaluation mode: fixed statistics (fine-tuning, small batches)")
    seed: int = option(0, "random seed: the same seed repeats a run")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """A configuration from JSON-like data, every value checked against its field's type."""
        dataclass_fields(cls, data, "training configuration")
        hints = typing.get_type_hints(cls)
        return cls(**{name: _typed(name, value, hints[name]) for name, value in data.items()})

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not a training configuration: {error.reason}") from None
        except ValueError as error:
            raise ValueError(f"{path} is not a usable training configuration: {error}") from None

    def with_absolute_paths(self) -> TrainConfig:
        """The same configuration with its file paths (data, data_root, pretrained) made absolute,
        so that it means the same thing from any working directory; a named dataset read from the
        default root (`$MOBILENET_DATA` or ~/.cache/mobilenet) records that root, so that a resume
        under another $MOBILENET_DATA still reads the data the run started with."""
        def absolute(path: str | None) -> str | None:
            return str(Path(path).expanduser().absolute()) if path else path

        data, root = self.data, self.data_root
        if data not in NAMED and Path(data).expanduser().exists():
            data = absolute(data)
        if data in NAMED and data != "digits" and not root:  # the embedded digits have no root
            root = str(default_root())
        return replace(self, data=data, data_root=absolute(root), pretrained=absolute(self.pretrained))

    def validate(self) -> TrainConfig:
        """Check the values a model and dataset cannot check for themselves: every number finite
        and in its range, every choice one of its choices."""
        for f in fields(self):
            value = getattr(self, f.name)
            numbers = value if isinstance(value, list) else [value]
            for number in numbers:
                if isinstance(number, float) and not math.isfinite(number):
                    raise ValueError(f"{f.name.replace('_', ' ')} must be a finite number, got {number}")
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (0 < self.lr_gamma <= 1, f"lr gamma (the exponential schedule's decay per epoch) must be in (0, 1], "
                                     f"got {self.lr_gamma}"),
            (0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1), got {self.label_smoothing}"),
            (0 <= self.random_erasing <= 1, f"random erasing must be in [0, 1], got {self.random_erasing}"),
            (0 <= self.ema_decay < 1, f"EMA decay must be in [0, 1), got {self.ema_decay}"),
            (self.dropout is None or 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.warmup_epochs >= 0, f"warm-up epochs must be >= 0, got {self.warmup_epochs}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (0 <= self.val_split < 1, f"val split must be a fraction in [0, 1), got {self.val_split}"),
            (0 <= self.resize_start <= self.resize_end <= 1,
             f"resize start and end must be fractions of the epochs with 0 <= start <= end <= 1, got "
             f"{self.resize_start} and {self.resize_end}"),
            (self.eval_every >= 1, f"eval every must be >= 1 epoch, got {self.eval_every}"),
            (0 <= self.freeze_epochs, f"freeze epochs must be >= 0, got {self.freeze_epochs}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.mean is None or len(self.mean) in (1, 3), f"mean must have 3 values (R, G, B) or 1 (grey), got "
                                                             f"{self.mean}"),
            (self.std is None or (len(self.std) in (1, 3) and min(self.std) > 0),
             f"std must have 3 positive values (R, G, B) or 1 (grey), got {self.std}"),
            (self.classes is None or len(self.classes) >= 1, "classes must name at least one class"),
            (self.in_chans in (None, 1, 3), f"in_chans must be 1 or 3, got {self.in_chans}"),
        ]
        checks += [(getattr(self, f.name) in f.metadata["choices"],
                    f"{f.name} must be {' or '.join(f.metadata['choices'])}, got {getattr(self, f.name)!r}")
                   for f in fields(self) if f.metadata.get("choices")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.resolution is not None:
            check_resolution(self.resolution)
        if self.min_resolution is not None:
            check_resolution(self.min_resolution)
            if self.resolution is not None and self.min_resolution >= self.resolution:
                raise ValueError(f"min resolution ({self.min_resolution}) must be below the resolution "
                                 f"({self.resolution})")
        return self


def _typed(name: str, value, hint):
    """`value` if it is of type `hint` (float accepts int), else ValueError naming the field."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        origin, args = typing.get_origin(option) or option, typing.get_args(option)
        if option is type(None) and value is None:
            return None
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin in (str, dict) and isinstance(value, origin):
            return value
        if origin is list and isinstance(value, list):
            try:
                return [_typed(name, item, args[0]) for item in value]
            except ValueError:
                continue
    expected = " or ".join("null" if o is type(None) else o.__name__ if isinstance(o, type) else str(o) for o in options)
    raise ValueError(f"{name} must be {expected}, got {json.dumps(value)[:60]}")
