"""What every MobileNet shares: the configuration that builds (and describes) a model, and the
network around the paper's table: stem, features, global pooling, dropout and classifier.

A version (`v1.py`, `v2.py`) only says how its table becomes `features`; everything else a model
is, and every check of its arguments, is here once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from mobilenet.checks import dataclass_fields, whole_number
from mobilenet.models.layers import (
    ConvBNAct, check_activation, check_num_classes, check_padding, check_width, init_weights,
)

STEM_CHANNELS = 32  # both papers' first row: a 3x3 convolution to 32 channels with stride 2


@dataclass(frozen=True)
class ModelConfig:
    """Everything that builds a model: `create_model(**config.to_dict())` rebuilds it, and a
    checkpoint's metadata holds exactly this. Defaults that differ between versions (activation,
    dropout) are filled in by the version's builder, so a config is always complete."""

    name: str
    width_mult: float
    num_classes: int
    small_input: bool
    activation: str
    dropout: float
    bn_eps: float = 1e-5
    padding: str = "symmetric"
    in_chans: int = 3  # input channels: 3 for RGB, 1 for grayscale (timm's and Keras's name for it)

    def __post_init__(self) -> None:
        object.__setattr__(self, "width_mult", check_width(self.width_mult))
        check_num_classes(self.num_classes)
        whole_number(self.in_chans, "in_chans", minimum=1, maximum=4)
        check_activation(self.activation)
        check_padding(self.padding)
        if not isinstance(self.small_input, bool):
            raise ValueError(f"small_input must be true or false, got {self.small_input!r}")
        for name, low, high in (("dropout", 0.0, 1.0), ("bn_eps", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
                raise ValueError(f"{name} must be a number in [{low:g}, {high:g}), got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def input_shape(self, batch: int, resolution: int) -> tuple[int, int, int, int]:
        """The shape of a batch the model takes: (batch, in_chans, resolution, resolution), NCHW."""
        return batch, self.in_chans, resolution, resolution

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """A config from JSON-like data (a checkpoint's metadata); ValueError names what is wrong."""
        return cls(**dataclass_fields(cls, data, "model configuration"))


def stride_one_first(rows: tuple) -> tuple:
    """The table with its first stride-2 row at stride 1: the small-input variant's rewrite."""
    first = next(i for i, row in enumerate(rows) if row.stride == 2)
    return (*rows[:first], replace(rows[first], stride=1), *rows[first + 1:])


class MobileNet(nn.Module):
    """A MobileNet built from `config`: `features` (stem, then the version's table), global
    average pooling, dropout and a linear classifier, with torchvision's initialisation.

    `small_input=True` is our variant for 32x32 images (CIFAR): the stem and the first stride-2
    row of the table run at stride 1, so the last feature map is 4x4 rather than 1x1.
    Subclasses give `ROWS` (the paper's table) or `VARIANTS` (name: (table, ...), the first entry
    the table), `stem_channels` and `body`.
    """

    ROWS: tuple = ()
    VARIANTS: dict[str, tuple] = {}

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        rows = stride_one_first(self.rows(config)) if config.small_input else self.rows(config)
        stem_stride = 1 if config.small_input else 2
        channels = self.stem_channels(config.width_mult)
        stem = ConvBNAct(config.in_chans, channels, 3, stem_stride, activation=config.activation, bn_eps=config.bn_eps,
                         padding=config.padding)
        body, channels = self.body(rows, channels, config)
        self.features = nn.Sequential(stem, *body)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head, channels = self.pooled_head(channels, config)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(channels, config.num_classes)
        self.num_features = channels
        self.output_stride = stem_stride
        for row in rows:
            self.output_stride *= row.stride
        init_weights(self)

    def rows(self, config: ModelConfig) -> tuple:
        """The table this model is built from: its variant's (`VARIANTS`), else `ROWS`."""
        return self.VARIANTS[config.name][0] if self.VARIANTS else self.ROWS

    @classmethod
    def variant_config(cls, variant: str, *fields) -> ModelConfig:
        """The ModelConfig of `variant`, a key of `VARIANTS`, with the other `fields` in ModelConfig's
        order (width_mult, num_classes, small_input, ...); ValueError for another name."""
        if variant not in cls.VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(cls.VARIANTS)}, got {variant!r}")
        return ModelConfig(variant, *fields)

    def stem_channels(self, width_mult: float) -> int:
        raise NotImplementedError

    def body(self, rows: tuple, channels: int, config: ModelConfig) -> tuple[list[nn.Module], int]:
        """The layers after the stem, built from the (possibly rewritten) table; and their output channels."""
        raise NotImplementedError

    def pooled_head(self, channels: int, config: ModelConfig) -> tuple[nn.Module, int]:
        """Layers between the pooling and the dropout, on the pooled 1x1 map (V3's and V4's 1x1
        convolution after the pooling); none in V1 and V2."""
        return nn.Identity(), channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.pool(self.features(x))).flatten(1)
        return self.classifier(self.dropout(x))


__all__ = ["MobileNet", "ModelConfig", "STEM_CHANNELS", "stride_one_first"]
