"""MobileNet V2 (Sandler et al., 2018, arXiv:1801.04381).

The body is the paper's Table 2: a 3x3 convolution with stride 2, seven stages of inverted
residual blocks given as (t, c, n, s) rows, a 1x1 convolution to 1280 channels, global average
pooling, dropout and a linear classifier. Channels scale with the width multiplier and are rounded
to multiples of 8 (`make_divisible`), the rule of every reference implementation; the 1280-channel
head is kept for width < 1 and scaled above 1 (paper, Section 6.1). This gives the reference
parameter counts (3,504,872 at width 1 with 1000 classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mobilenet.models.layers import (
    ConvBNAct, InvertedResidual, check_activation, check_num_classes, check_padding, check_width, init_weights,
    make_divisible,
)


@dataclass(frozen=True)
class Stage:
    """One row of Table 2: `repeats` (n) inverted residual blocks with expansion factor
    `expansion` (t) and `out_channels` (c); the first block has `stride` (s), the others 1."""

    expansion: int
    out_channels: int
    repeats: int
    stride: int


STEM_CHANNELS = 32  # Table 2, first row: conv2d, 32 channels, stride 2
HEAD_CHANNELS = 1280  # Table 2, the conv2d 1x1 before the pooling

STAGES: tuple[Stage, ...] = (
    #     t,   c, n, s
    Stage(1,  16, 1, 1),
    Stage(6,  24, 2, 2),
    Stage(6,  32, 3, 2),
    Stage(6,  64, 4, 2),
    Stage(6,  96, 3, 1),
    Stage(6, 160, 3, 2),
    Stage(6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """MobileNet V2 at width multiplier `width_mult`.

    `small_input=True` is our variant for 32x32 images (CIFAR): the stem and the first stride-2
    stage run at stride 1, so the last feature map is 4x4 rather than 1x1.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        small_input: bool = False,
        activation: str = "relu6",
        dropout: float = 0.2,
        bn_eps: float = 1e-5,
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        width_mult = check_width(width_mult)
        check_num_classes(num_classes)
        check_activation(activation)
        check_padding(padding)
        self.config = {
            "name": "mobilenet_v2", "width_mult": width_mult, "num_classes": num_classes,
            "small_input": bool(small_input), "activation": activation, "dropout": dropout, "bn_eps": bn_eps, "padding": padding,
        }
        stages = list(STAGES)
        if small_input:
            first = next(i for i, s in enumerate(stages) if s.stride == 2)
            stages[first] = Stage(stages[first].expansion, stages[first].out_channels, stages[first].repeats, 1)
        stem_stride = 1 if small_input else 2

        channels = make_divisible(STEM_CHANNELS * width_mult)
        layers: list[nn.Module] = [ConvBNAct(3, channels, 3, stem_stride, activation=activation, bn_eps=bn_eps, padding=padding)]
        output_stride = stem_stride
        for stage in stages:
            out = make_divisible(stage.out_channels * width_mult)
            for i in range(stage.repeats):
                stride = stage.stride if i == 0 else 1
                layers.append(InvertedResidual(channels, out, stride, stage.expansion, activation, bn_eps, padding))
                channels = out
            output_stride *= stage.stride
        head = make_divisible(HEAD_CHANNELS * max(1.0, width_mult))
        layers.append(ConvBNAct(channels, head, 1, activation=activation, bn_eps=bn_eps))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(head, num_classes)
        self.num_features = head
        self.output_stride = output_stride
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def mobilenet_v2(width_mult: float = 1.0, num_classes: int = 1000, small_input: bool = False, **kwargs) -> MobileNetV2:
    """MobileNet V2 (paper Table 2) at width multiplier `width_mult`."""
    return MobileNetV2(width_mult, num_classes, small_input, **kwargs)
