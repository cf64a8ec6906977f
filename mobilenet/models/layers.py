"""The building blocks of the MobileNet papers, with the papers' names.

State-dict keys read like the papers: a depthwise separable block has `depthwise` and `pointwise`
parts (V1, Figure 3), an inverted residual has `expand`, `depthwise` and `project` parts (V2,
Table 1). Every convolution is followed by BatchNorm; optional parts are `nn.Identity`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mobilenet.checks import whole_number

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish}
PADDINGS = ("symmetric", "tf_same")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a scaled channel count to the nearest multiple of `divisor`, never dropping below 90%.

    This is the V2 rule shared by the reference implementations (TF-slim, torchvision, timm):
    hardware likes channel counts that are multiples of 8. V1 uses the paper's plain `int(c * alpha)`
    instead (see `v1.py`).
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # never lose more than 10% of the channels to rounding
        rounded += divisor
    return rounded


def check_width(width_mult: float) -> float:
    """Validate the width multiplier alpha: a finite number in (0, 4]."""
    try:
        alpha = float(width_mult)
    except (TypeError, ValueError):
        raise ValueError(f"width must be a number in (0, 4], got {width_mult!r}") from None
    if not math.isfinite(alpha) or not 0 < alpha <= 4:
        raise ValueError(f"width must be a finite number in (0, 4], got {width_mult!r}")
    return alpha


def check_num_classes(num_classes: int) -> int:
    """Validate the number of classes: an integer of at least 1."""
    whole_number(num_classes, "num_classes")
    return num_classes


def check_padding(padding: str) -> str:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
    return padding


def check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    return activation


class TFSamePad(nn.Module):
    """TensorFlow's 'SAME' padding: the output is ceil(input / stride), and when the padding needed
    is odd the extra pixel goes to the bottom and right. PyTorch pads symmetrically, so a stride-2
    3x3 convolution on an even input sees the image shifted by one pixel unless it pads this way:
    weights trained in TensorFlow (Keras, TF-slim) need it."""

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def amount(self, size: int) -> tuple[int, int]:
        """(before, after) padding of one spatial side of `size` pixels."""
        total = max((-(-size // self.stride) - 1) * self.stride + self.kernel_size - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self.amount(x.shape[-2])
        left, right = self.amount(x.shape[-1])
        return nn.functional.pad(x, (left, right, top, bottom))


class ConvBNAct(nn.Sequential):
    """Convolution (no bias) + BatchNorm + activation: the unit every MobileNet layer is made of.

    `groups == in_channels` makes it a depthwise convolution; `activation=None` leaves it linear
    (V2's projection, the "linear bottleneck"). `padding="tf_same"` pads as TensorFlow does
    (see `TFSamePad`); the default pads (k - 1) / 2 on every side.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: str | None = "relu",
        bn_eps: float = 1e-5,
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        tf_same = padding == "tf_same" and kernel_size > 1
        if tf_same:  # registered first: a Sequential runs its children in order
            self.pad = TFSamePad(kernel_size, stride)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=0 if tf_same else (kernel_size - 1) // 2,
            groups=groups, bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps)
        self.act = ACTIVATIONS[activation](inplace=True) if activation else nn.Identity()


class DepthwiseSeparable(nn.Module):
    """V1 Figure 3: a 3x3 depthwise convolution that filters each channel, then a 1x1 pointwise
    convolution that combines them; each followed by BatchNorm and the activation."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int,
        activation: str = "relu", bn_eps: float = 1e-5, padding: str = "symmetric",
    ) -> None:
        super().__init__()
        self.depthwise = ConvBNAct(in_channels, in_channels, 3, stride, groups=in_channels,
                                   activation=activation, bn_eps=bn_eps, padding=padding)
        self.pointwise = ConvBNAct(in_channels, out_channels, 1, activation=activation, bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class SqueezeExcite(nn.Module):
    """V3 Section 5.3 (after Hu et al.): global average pooling, a 1x1 reduction to `squeeze`
    channels with ReLU, a 1x1 expansion back with a hard sigmoid, and the input scaled channel by
    channel by the result. The two 1x1 layers have biases and no BatchNorm, as in the reference
    implementations."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))


class InvertedResidual(nn.Module):
    """V2 Table 1: 1x1 expansion by t (+ReLU6), 3x3 depthwise (+ReLU6), linear 1x1 projection.

    The expansion is absent when t = 1. The shortcut joins the thin bottlenecks, and exists only
    where the block keeps both the resolution (stride 1) and the channel count. V3's "bneck" is the
    same block given its `hidden` channels (the expansion size), a 3x3 or 5x5 `kernel_size` and
    optionally squeeze-and-excitation of `squeeze` channels after the depthwise layer.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, expand_ratio: float = 1.0,
        activation: str = "relu6", bn_eps: float = 1e-5, padding: str = "symmetric", *,
        hidden: int | None = None, kernel_size: int = 3, squeeze: int | None = None,
    ) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio)) if hidden is None else hidden
        self.use_shortcut = stride == 1 and in_channels == out_channels
        self.expand = (
            ConvBNAct(in_channels, hidden, 1, activation=activation, bn_eps=bn_eps)
            if hidden != in_channels else nn.Identity()
        )
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden,
                                   activation=activation, bn_eps=bn_eps, padding=padding)
        self.se = SqueezeExcite(hidden, squeeze) if squeeze else nn.Identity()
        self.project = ConvBNAct(hidden, out_channels, 1, activation=None, bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + out if self.use_shortcut else out


def init_weights(model: nn.Module) -> None:
    """The initialisation of torchvision's MobileNets, applied once after construction.

    Convolutions: Kaiming normal over the fan-out as PyTorch counts it, out_channels * k * k,
    which for a depthwise layer ignores its groups: depthwise filters start ~sqrt(channels) times
    smaller than with timm's per-group fan-out. Behind BatchNorm their scale does not change the
    function, only how fast they learn, and small is faster: on digits, V1 0.5 learned several
    times faster this way than with the per-group fan-out. BatchNorm: identity;
    classifier: N(0, 0.01). A model on the meta device (as `cost` builds one) has no values to set.
    """
    if any(p.is_meta for p in model.parameters()):
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
