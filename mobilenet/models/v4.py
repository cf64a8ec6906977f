"""MobileNet V4, its convolutional models (Qin et al., 2024, arXiv:2404.10518): Conv-S, Conv-M, Conv-L.

The bodies are the paper's tables (the layer lists of timm's `mobilenetv4_conv_*`, which follow
them): a 3x3 convolution with stride 2, then rows of
- `Conv`: a plain convolution with BatchNorm and ReLU (Conv-S's first layers, and the 1x1 to 960);
- `FusedIB`: a full k x k convolution that expands, then a linear 1x1 projection;
- the Universal Inverted Bottleneck (UIB, Section 3.1): an optional depthwise convolution before
  the 1x1 expansion ("start"), an optional one between the expansion and the linear 1x1 projection
  ("middle"). Both present is ExtraDW, only the middle one V2's inverted bottleneck (IB), only the
  start one ConvNeXt's block, neither a feed-forward network (FFN). The stride is the middle
  depthwise layer's, or the start one's when there is no middle one.
Then global average pooling, a 1x1 convolution to 1280 channels with BatchNorm and ReLU, dropout and
the classifier. ReLU everywhere, no squeeze-and-excitation. A block adds its input where the stride
is 1 and the channels match. Expansions are factors of each block's input channels, rounded to a
multiple of 8 like every channel count (`make_divisible`); the width multiplier scales the outputs,
and the 1280-channel head is kept below width 1 (as V2's and V3's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mobilenet.models.base import MobileNet, ModelConfig
from mobilenet.models.layers import ConvBNAct, make_divisible

CONV, FUSED, UIB = "conv", "fused_ib", "uib"


@dataclass(frozen=True)
class Row:
    """One row of the tables: the block, its start and middle depthwise kernels (UIB; 0: none) or
    its kernel (Conv, FusedIB: `middle`), expansion factor, output channels, stride of the first of
    `repeats` blocks (the others stride 1)."""

    block: str
    start: int
    middle: int
    expansion: float
    out_channels: int
    stride: int
    repeats: int = 1


def conv(kernel: int, out: int, stride: int = 1) -> Row:
    return Row(CONV, 0, kernel, 1, out, stride)


def fused(kernel: int, expansion: float, out: int, stride: int) -> Row:
    return Row(FUSED, 0, kernel, expansion, out, stride)


def uib(start: int, middle: int, expansion: float, out: int, stride: int = 1, repeats: int = 1) -> Row:
    return Row(UIB, start, middle, expansion, out, stride, repeats)


CONV_SMALL: tuple[Row, ...] = (
    conv(3, 32, 2), conv(1, 32),
    conv(3, 96, 2), conv(1, 64),
    uib(5, 5, 3, 96, 2), uib(0, 3, 2, 96, repeats=4), uib(3, 0, 4, 96),
    uib(3, 3, 6, 128, 2), uib(5, 5, 4, 128), uib(0, 5, 4, 128), uib(0, 5, 3, 128), uib(0, 3, 4, 128, repeats=2),
    conv(1, 960),
)

CONV_MEDIUM: tuple[Row, ...] = (
    fused(3, 4, 48, 2),
    uib(3, 5, 4, 80, 2), uib(3, 3, 2, 80),
    uib(3, 5, 6, 160, 2), uib(3, 3, 4, 160, repeats=2), uib(3, 5, 4, 160), uib(3, 3, 4, 160), uib(3, 0, 4, 160),
    uib(0, 0, 2, 160), uib(3, 0, 4, 160),
    uib(5, 5, 6, 256, 2), uib(5, 5, 4, 256), uib(3, 5, 4, 256, repeats=2), uib(0, 0, 4, 256), uib(3, 0, 4, 256),
    uib(3, 5, 2, 256), uib(5, 5, 4, 256), uib(0, 0, 4, 256, repeats=2), uib(5, 0, 2, 256),
    conv(1, 960),
)

CONV_LARGE: tuple[Row, ...] = (
    fused(3, 4, 48, 2),
    uib(3, 5, 4, 96, 2), uib(3, 3, 4, 96),
    uib(3, 5, 4, 192, 2), uib(3, 3, 4, 192, repeats=3), uib(3, 5, 4, 192), uib(5, 3, 4, 192, repeats=5),
    uib(3, 0, 4, 192),
    uib(5, 5, 4, 512, 2, repeats=4), uib(5, 0, 4, 512), uib(5, 3, 4, 512), uib(5, 0, 4, 512, repeats=2),
    uib(5, 3, 4, 512), uib(5, 5, 4, 512), uib(5, 0, 4, 512, repeats=3),
    conv(1, 960),
)

HEAD_CHANNELS = 1280
# Each model: its table, its stem's channels and the side the paper trains and measures it at.
VARIANTS: dict[str, tuple[tuple[Row, ...], int, int]] = {
    "mobilenet_v4_conv_small": (CONV_SMALL, 32, 224),
    "mobilenet_v4_conv_medium": (CONV_MEDIUM, 32, 256),
    "mobilenet_v4_conv_large": (CONV_LARGE, 24, 384),
}


class FusedIB(nn.Module):
    """A full k x k convolution expanding the channels (BatchNorm, ReLU), then a linear 1x1 projection."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, hidden: int,
                 bn_eps: float, padding: str) -> None:
        super().__init__()
        self.use_shortcut = stride == 1 and in_channels == out_channels
        self.expand = ConvBNAct(in_channels, hidden, kernel, stride, bn_eps=bn_eps, padding=padding)
        self.project = ConvBNAct(hidden, out_channels, 1, activation=None, bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.expand(x))
        return x + out if self.use_shortcut else out


class UniversalInvertedBottleneck(nn.Module):
    """Section 3.1's UIB: optional depthwise `start` (BatchNorm, no activation), 1x1 `expand`
    (BatchNorm, ReLU), optional depthwise `middle` (BatchNorm, ReLU), linear 1x1 `project`."""

    def __init__(self, in_channels: int, out_channels: int, start: int, middle: int, stride: int, hidden: int,
                 bn_eps: float, padding: str) -> None:
        super().__init__()
        if stride != 1 and not (start or middle):
            raise ValueError("a UIB without depthwise layers (FFN) cannot have a stride")
        self.use_shortcut = stride == 1 and in_channels == out_channels
        self.start = (ConvBNAct(in_channels, in_channels, start, 1 if middle else stride, groups=in_channels,
                                activation=None, bn_eps=bn_eps, padding=padding) if start else nn.Identity())
        self.expand = ConvBNAct(in_channels, hidden, 1, bn_eps=bn_eps)
        self.middle = (ConvBNAct(hidden, hidden, middle, stride, groups=hidden, bn_eps=bn_eps, padding=padding)
                       if middle else nn.Identity())
        self.project = ConvBNAct(hidden, out_channels, 1, activation=None, bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.middle(self.expand(self.start(x))))
        return x + out if self.use_shortcut else out


class MobileNetV4(MobileNet):
    """A convolutional MobileNet V4 (`variant`, a key of VARIANTS) at width multiplier `width_mult`."""

    VARIANTS = VARIANTS

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, small_input: bool = False,
                 activation: str = "relu", dropout: float = 0.2, bn_eps: float = 1e-5, padding: str = "symmetric",
                 in_chans: int = 3, variant: str = "mobilenet_v4_conv_small") -> None:
        super().__init__(self.variant_config(variant, width_mult, num_classes, bool(small_input), activation, dropout,
                                             bn_eps, padding, in_chans))

    def rows(self, config: ModelConfig) -> tuple[Row, ...]:
        # one row per block, so that the small-input rewrite finds the first stride-2 block
        return tuple(Row(row.block, row.start, row.middle, row.expansion, row.out_channels,
                         row.stride if i == 0 else 1) for row in VARIANTS[config.name][0] for i in range(row.repeats))

    def stem_channels(self, width_mult: float) -> int:
        return make_divisible(VARIANTS[self.config.name][1] * width_mult)

    def body(self, rows: tuple[Row, ...], channels: int, config: ModelConfig) -> tuple[list[nn.Module], int]:
        layers: list[nn.Module] = []
        for row in rows:
            out = make_divisible(row.out_channels * config.width_mult)
            hidden = make_divisible(channels * row.expansion)
            if row.block == CONV:
                layers.append(ConvBNAct(channels, out, row.middle, row.stride, bn_eps=config.bn_eps,
                                        padding=config.padding))
            elif row.block == FUSED:
                layers.append(FusedIB(channels, out, row.middle, row.stride, hidden, config.bn_eps, config.padding))
            else:
                layers.append(UniversalInvertedBottleneck(channels, out, row.start, row.middle, row.stride, hidden,
                                                          config.bn_eps, config.padding))
            channels = out
        return layers, channels

    def pooled_head(self, channels: int, config: ModelConfig) -> tuple[nn.Module, int]:
        head = make_divisible(HEAD_CHANNELS * max(1.0, config.width_mult))
        return ConvBNAct(channels, head, 1, bn_eps=config.bn_eps), head


def _builder(variant: str, doc: str):
    def build(width_mult: float = 1.0, num_classes: int = 1000, small_input: bool = False, **kwargs) -> MobileNetV4:
        return MobileNetV4(width_mult, num_classes, small_input, variant=variant, **kwargs)

    build.__name__, build.__doc__ = variant, doc
    return build


mobilenet_v4_conv_small = _builder("mobilenet_v4_conv_small", "MobileNet V4 Conv-S at width multiplier `width_mult`.")
mobilenet_v4_conv_medium = _builder("mobilenet_v4_conv_medium", "MobileNet V4 Conv-M at width multiplier `width_mult`.")
mobilenet_v4_conv_large = _builder("mobilenet_v4_conv_large", "MobileNet V4 Conv-L at width multiplier `width_mult`.")

__all__ = ["FusedIB", "MobileNetV4", "Row", "UniversalInvertedBottleneck", "VARIANTS", "mobilenet_v4_conv_large",
           "mobilenet_v4_conv_medium", "mobilenet_v4_conv_small"]
