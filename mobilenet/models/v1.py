"""MobileNet V1 (Howard et al., 2017, arXiv:1704.04861), and its full-convolution baseline.

The body is the paper's Table 1: a 3x3 convolution with stride 2, then 13 depthwise separable
blocks, global average pooling and a fully connected classifier. The width multiplier alpha thins
every layer to `int(c * alpha)` channels, the paper's own rule (Section 3.3), which is what gives
the reference parameter counts (4,231,976 at alpha = 1 with 1000 classes). The resolution
multiplier is not a property of the model: it accepts any input its strides allow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mobilenet.models.layers import (
    ConvBNAct, DepthwiseSeparable, check_activation, check_num_classes, check_padding, check_width, init_weights,
)


@dataclass(frozen=True)
class Block:
    """One row pair of Table 1: a depthwise layer with `stride`, then a pointwise layer."""

    out_channels: int
    stride: int


STEM_CHANNELS = 32  # Table 1, first row: Conv / s2, 3x3x3x32

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


def scale_channels(channels: int, width_mult: float) -> int:
    """The paper's width rule: alpha * channels, truncated, and never below one channel."""
    return max(1, int(channels * width_mult))


class MobileNetV1(nn.Module):
    """MobileNet V1, or with `separable=False` the paper's Table 4 baseline in which every
    depthwise separable block is a full 3x3 convolution (same channels and strides).

    `small_input=True` is our variant for 32x32 images (CIFAR): the stem and the first stride-2
    block run at stride 1, so the last feature map is 4x4 rather than 1x1. With `num_classes=10`
    and `small_input=False` this is exactly the seed's CIFAR-10 model.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        small_input: bool = False,
        activation: str = "relu",
        dropout: float = 0.0,
        bn_eps: float = 1e-5,
        padding: str = "symmetric",
        separable: bool = True,
    ) -> None:
        super().__init__()
        width_mult = check_width(width_mult)
        check_num_classes(num_classes)
        check_activation(activation)
        check_padding(padding)
        self.config = {
            "name": "mobilenet_v1" if separable else "conv_mobilenet_v1",
            "width_mult": width_mult, "num_classes": num_classes, "small_input": bool(small_input),
            "activation": activation, "dropout": dropout, "bn_eps": bn_eps, "padding": padding,
        }
        blocks = list(BLOCKS)
        if small_input:
            first = next(i for i, b in enumerate(blocks) if b.stride == 2)
            blocks[first] = Block(blocks[first].out_channels, 1)
        stem_stride = 1 if small_input else 2

        channels = scale_channels(STEM_CHANNELS, width_mult)
        layers: list[nn.Module] = [ConvBNAct(3, channels, 3, stem_stride, activation=activation, bn_eps=bn_eps, padding=padding)]
        for block in blocks:
            out = scale_channels(block.out_channels, width_mult)
            if separable:
                layers.append(DepthwiseSeparable(channels, out, block.stride, activation, bn_eps, padding))
            else:
                layers.append(ConvBNAct(channels, out, 3, block.stride, activation=activation, bn_eps=bn_eps, padding=padding))
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(channels, num_classes)
        self.num_features = channels
        self.output_stride = stem_stride * _product(b.stride for b in blocks)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def _product(values) -> int:
    result = 1
    for v in values:
        result *= v
    return result


def mobilenet_v1(width_mult: float = 1.0, num_classes: int = 1000, small_input: bool = False, **kwargs) -> MobileNetV1:
    """MobileNet V1 (paper Table 1) at width multiplier `width_mult`."""
    return MobileNetV1(width_mult, num_classes, small_input, **kwargs)


def conv_mobilenet_v1(width_mult: float = 1.0, num_classes: int = 1000, small_input: bool = False, **kwargs) -> MobileNetV1:
    """The paper's Table 4 baseline: MobileNet V1 with full 3x3 convolutions instead of separable ones."""
    return MobileNetV1(width_mult, num_classes, small_input, separable=False, **kwargs)


__all__ = ["BLOCKS", "Block", "MobileNetV1", "conv_mobilenet_v1", "mobilenet_v1"]
