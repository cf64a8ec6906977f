"""MobileNet V1 (Howard et al., 2017, arXiv:1704.04861), and its full-convolution and shallow baselines.

The body is the paper's Table 1: a 3x3 convolution with stride 2, then 13 depthwise separable
blocks, global average pooling and a fully connected classifier. The width multiplier alpha thins
every layer to `int(c * alpha)` channels, the paper's own rule (Section 3.3), which is what gives
the reference parameter counts (4,231,976 at alpha = 1 with 1000 classes). The resolution
multiplier is not a property of the model: it accepts any input its strides allow.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mobilenet.models.base import STEM_CHANNELS, MobileNet, ModelConfig
from mobilenet.models.layers import ConvBNAct, DepthwiseSeparable


@dataclass(frozen=True)
class Block:
    """One row pair of Table 1: a depthwise layer with `stride`, then a pointwise layer."""

    out_channels: int
    stride: int


# Table 1. The paper prints the last depthwise layer as "s2", but its input and output are both
# 7x7x1024: every reference implementation (TF-slim, Keras, timm) uses stride 1 there, as here.
BLOCKS: tuple[Block, ...] = (
    Block(64, 1),
    Block(128, 2),
    Block(128, 1),
    Block(256, 2),
    Block(256, 1),
    Block(512, 2),
    Block(512, 1), Block(512, 1), Block(512, 1), Block(512, 1), Block(512, 1),  # "5x"
    Block(1024, 2),
    Block(1024, 1),
)


# Table 5's shallow MobileNet: the five separable layers of feature size 14x14x512 ("5x") removed,
# 307 M mult-adds and 2.9 M parameters at 224 (the paper's figures; tests/test_cost.py).
SHALLOW_BLOCKS: tuple[Block, ...] = BLOCKS[:6] + BLOCKS[11:]

# The V1 family by name: its table and whether its blocks are depthwise separable (Table 4's
# baseline has full 3x3 convolutions instead, with the same channels and strides).
VARIANTS: dict[str, tuple[tuple[Block, ...], bool]] = {
    "mobilenet_v1": (BLOCKS, True),
    "conv_mobilenet_v1": (BLOCKS, False),
    "shallow_mobilenet_v1": (SHALLOW_BLOCKS, True),
}


def scale_channels(channels: int, width_mult: float) -> int:
    """The paper's width rule: alpha * channels, truncated, and never below one channel."""
    return max(1, int(channels * width_mult))


class MobileNetV1(MobileNet):
    """MobileNet V1, or one of the paper's baselines (`variant`, a key of VARIANTS): Table 4's
    `conv_mobilenet_v1`, in which every depthwise separable block is a full 3x3 convolution, and
    Table 5's `shallow_mobilenet_v1`. With `num_classes=10` and `small_input=False` this is
    exactly the seed's CIFAR-10 model."""

    VARIANTS = VARIANTS

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, small_input: bool = False,
                 activation: str = "relu", dropout: float = 0.0, bn_eps: float = 1e-5, padding: str = "symmetric",
                 in_chans: int = 3, variant: str = "mobilenet_v1") -> None:
        super().__init__(self.variant_config(variant, width_mult, num_classes, bool(small_input), activation, dropout,
                                             bn_eps, padding, in_chans))

    def stem_channels(self, width_mult: float) -> int:
        return scale_channels(STEM_CHANNELS, width_mult)

    def body(self, rows: tuple[Block, ...], channels: int, config: ModelConfig) -> tuple[list[nn.Module], int]:
        layers: list[nn.Module] = []
        separable = VARIANTS[config.name][1]
        for block in rows:
            out = scale_channels(block.out_channels, config.width_mult)
            if separable:
                layers.append(DepthwiseSeparable(channels, out, block.stride, config.activation, config.bn_eps,
                                                 config.padding))
            else:
                layers.append(ConvBNAct(channels, out, 3, block.stride, activation=config.activation,
                                        bn_eps=config.bn_eps, padding=config.padding))
            channels = out
        return layers, channels


def mobilenet_v1(width_mult: float = 1.0, num_classes: int = 1000, small_input: bool = False, **kwargs) -> MobileNetV1:
    """MobileNet V1 (paper Table 1) at width multiplier `width_mult`."""
    return MobileNetV1(width_mult, num_classes, small_input, **kwargs)


def conv_mobilenet_v1(width_mult: float = 1.0, num_classes: int = 1000, small_input: bool = False, **kwargs) -> MobileNetV1:
    """The paper's Table 4 baseline: MobileNet V1 with full 3x3 convolutions instead of separable ones."""
    return MobileNetV1(width_mult, num_classes, small_input, variant="conv_mobilenet_v1", **kwargs)


def shallow_mobilenet_v1(width_mult: float = 1.0, num_classes: int = 1000, small_input: bool = False,
                         **kwargs) -> MobileNetV1:
    """The paper's Table 5 baseline: MobileNet V1 without its five 14x14x512 separable layers."""
    return MobileNetV1(width_mult, num_classes, small_input, variant="shallow_mobilenet_v1", **kwargs)


__all__ = ["BLOCKS", "Block", "MobileNetV1", "SHALLOW_BLOCKS", "VARIANTS", "conv_mobilenet_v1", "mobilenet_v1",
           "shallow_mobilenet_v1"]
