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

from torch import nn

from mobilenet.models.base import STEM_CHANNELS, MobileNet, ModelConfig
from mobilenet.models.layers import ConvBNAct, InvertedResidual, make_divisible


@dataclass(frozen=True)
class Stage:
    """One row of Table 2: `repeats` (n) inverted residual blocks with expansion factor
    `expansion` (t) and `out_channels` (c); the first block has `stride` (s), the others 1."""

    expansion: int
    out_channels: int
    repeats: int
    stride: int


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


class MobileNetV2(MobileNet):
    """MobileNet V2 at width multiplier `width_mult`."""

    ROWS = STAGES

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, small_input: bool = False,
                 activation: str = "relu6", dropout: float = 0.2, bn_eps: float = 1e-5,
                 padding: str = "symmetric", in_chans: int = 3) -> None:
        super().__init__(ModelConfig("mobilenet_v2", width_mult, num_classes, bool(small_input), activation, dropout,
                                     bn_eps, padding, in_chans))

    def stem_channels(self, width_mult: float) -> int:
        return make_divisible(STEM_CHANNELS * width_mult)

    def body(self, rows: tuple[Stage, ...], channels: int, config: ModelConfig) -> tuple[list[nn.Module], int]:
        layers: list[nn.Module] = []
        for stage in rows:
            out = make_divisible(stage.out_channels * config.width_mult)
            for i in range(stage.repeats):
                layers.append(InvertedResidual(channels, out, stage.stride if i == 0 else 1, stage.expansion,
                                               config.activation, config.bn_eps, config.padding))
                channels = out
        head = make_divisible(HEAD_CHANNELS * max(1.0, config.width_mult))
        layers.append(ConvBNAct(channels, head, 1, activation=config.activation, bn_eps=config.bn_eps))
        return layers, head


def mobilenet_v2(width_mult: float = 1.0, num_classes: int = 1000, small_input: bool = False, **kwargs) -> MobileNetV2:
    """MobileNet V2 (paper Table 2) at width multiplier `width_mult`."""
    return MobileNetV2(width_mult, num_classes, small_input, **kwargs)
