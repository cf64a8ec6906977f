"""MobileNet V3 (Howard et al., 2019, arXiv:1905.02244), Large and Small.

The bodies are the paper's Tables 1 and 2: a 3x3 convolution to 16 channels with stride 2 and
hard-swish, then "bneck" rows (V2's inverted residual with the expansion size given, a 3x3 or 5x5
depthwise kernel, squeeze-and-excitation where the table says SE, ReLU or hard-swish), a 1x1
convolution with BatchNorm and hard-swish, global average pooling, a 1x1 convolution without
BatchNorm (a linear layer on the pooled vector) with hard-swish, dropout and the classifier.
Channels scale with the width multiplier and are rounded to multiples of 8 (`make_divisible`); the
expansion is the table's factor of each block's (rounded) input; the squeeze-and-excitation layer
has a quarter of its block's expansion channels, rounded the same way; the head after the pooling
keeps 1280 (1024) channels below width 1 and scales above, like V2's. These are the rules of the
authors' TF-slim code, Keras and timm, which give the paper's Table 3 at width 0.75 (torchvision
scales the expansion and the head directly: the same model at width 1 only, where every
implementation has 5,483,032 parameters for Large and 2,542,856 for Small with 1000 classes).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mobilenet.models.base import MobileNet, ModelConfig
from mobilenet.models.layers import ConvBNAct, InvertedResidual, make_divisible

RE, HS = "relu", "hardswish"  # the tables' NL column


@dataclass(frozen=True)
class Bneck:
    """One row of Tables 1 and 2: kernel size, expansion size ("exp size"), output channels
    ("#out"), squeeze-and-excitation ("SE"), non-linearity ("NL") and stride ("s")."""

    kernel: int
    expansion: int
    out_channels: int
    se: bool
    activation: str
    stride: int


LARGE: tuple[Bneck, ...] = (
    #     k, exp, out,    SE,  NL, s
    Bneck(3,  16,  16, False, RE, 1),
    Bneck(3,  64,  24, False, RE, 2),
    Bneck(3,  72,  24, False, RE, 1),
    Bneck(5,  72,  40, True,  RE, 2),
    Bneck(5, 120,  40, True,  RE, 1),
    Bneck(5, 120,  40, True,  RE, 1),
    Bneck(3, 240,  80, False, HS, 2),
    Bneck(3, 200,  80, False, HS, 1),
    Bneck(3, 184,  80, False, HS, 1),
    Bneck(3, 184,  80, False, HS, 1),
    Bneck(3, 480, 112, True,  HS, 1),
    Bneck(3, 672, 112, True,  HS, 1),
    Bneck(5, 672, 160, True,  HS, 2),
    Bneck(5, 960, 160, True,  HS, 1),
    Bneck(5, 960, 160, True,  HS, 1),
)

SMALL: tuple[Bneck, ...] = (
    #     k, exp, out,    SE,  NL, s
    Bneck(3,  16,  16, True,  RE, 2),
    Bneck(3,  72,  24, False, RE, 2),
    Bneck(3,  88,  24, False, RE, 1),
    Bneck(5,  96,  40, True,  HS, 2),
    Bneck(5, 240,  40, True,  HS, 1),
    Bneck(5, 240,  40, True,  HS, 1),
    Bneck(5, 120,  48, True,  HS, 1),
    Bneck(5, 144,  48, True,  HS, 1),
    Bneck(5, 288,  96, True,  HS, 2),
    Bneck(5, 576,  96, True,  HS, 1),
    Bneck(5, 576,  96, True,  HS, 1),
)

STEM_CHANNELS = 16
# The table and the channels of the 1x1 convolutions after it: before the pooling (with BatchNorm)
# and after it (without), "conv2d 1x1, NBN" in the tables.
VARIANTS: dict[str, tuple[tuple[Bneck, ...], int, int]] = {
    "mobilenet_v3_large": (LARGE, 960, 1280),
    "mobilenet_v3_small": (SMALL, 576, 1024),
}
SE_REDUCTION = 4  # squeeze-and-excitation: a quarter of the expansion channels (Section 5.3)


class MobileNetV3(MobileNet):
    """MobileNet V3 Large or Small (`variant`, a key of VARIANTS) at width multiplier `width_mult`."""

    VARIANTS = VARIANTS

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, small_input: bool = False,
                 activation: str = HS, dropout: float = 0.2, bn_eps: float = 1e-3, padding: str = "symmetric",
                 in_chans: int = 3, variant: str = "mobilenet_v3_large") -> None:
        super().__init__(self.variant_config(variant, width_mult, num_classes, bool(small_input), activation, dropout,
                                             bn_eps, padding, in_chans))

    def stem_channels(self, width_mult: float) -> int:
        return make_divisible(STEM_CHANNELS * width_mult)

    def body(self, rows: tuple[Bneck, ...], channels: int, config: ModelConfig) -> tuple[list[nn.Module], int]:
        layers: list[nn.Module] = []
        table_in = STEM_CHANNELS
        for row in rows:
            # the expansion is a factor of the block's input, as in the authors' code (TF-slim's
            # expand_input_by_factor; Keras and timm alike): the table's exp size at width 1
            hidden = make_divisible(row.expansion / table_in * channels)
            out = make_divisible(row.out_channels * config.width_mult)
            table_in = row.out_channels
            layers.append(InvertedResidual(channels, out, row.stride, activation=row.activation, bn_eps=config.bn_eps,
                                           padding=config.padding, hidden=hidden, kernel_size=row.kernel,
                                           squeeze=make_divisible(hidden // SE_REDUCTION) if row.se else None))
            channels = out
        last = make_divisible(VARIANTS[config.name][1] * config.width_mult)
        layers.append(ConvBNAct(channels, last, 1, activation=config.activation, bn_eps=config.bn_eps))
        return layers, last

    def pooled_head(self, channels: int, config: ModelConfig) -> tuple[nn.Module, int]:
        head = make_divisible(VARIANTS[config.name][2] * max(1.0, config.width_mult))  # kept below width 1
        return nn.Sequential(nn.Conv2d(channels, head, 1), nn.Hardswish(inplace=True)), head  # no BatchNorm: a bias


def mobilenet_v3_large(width_mult: float = 1.0, num_classes: int = 1000, small_input: bool = False,
                       **kwargs) -> MobileNetV3:
    """MobileNet V3-Large (paper Table 1) at width multiplier `width_mult`."""
    return MobileNetV3(width_mult, num_classes, small_input, variant="mobilenet_v3_large", **kwargs)


def mobilenet_v3_small(width_mult: float = 1.0, num_classes: int = 1000, small_input: bool = False,
                       **kwargs) -> MobileNetV3:
    """MobileNet V3-Small (paper Table 2) at width multiplier `width_mult`."""
    return MobileNetV3(width_mult, num_classes, small_input, variant="mobilenet_v3_small", **kwargs)


__all__ = ["Bneck", "LARGE", "MobileNetV3", "SMALL", "VARIANTS", "mobilenet_v3_large", "mobilenet_v3_small"]
