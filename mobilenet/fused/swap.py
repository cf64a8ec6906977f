"""Swapping the kernels' modules into a model, in place, keeping its parameters, buffers and
state-dict keys: `fuse(model, kernels)`, by the names of `KERNELS`."""

from __future__ import annotations

from torch import nn

from mobilenet.fused.library import MAX_TAPS
from mobilenet.fused.ops import CLAMPS, BatchNormAct2d, DepthwiseConv2d, PointwiseConv2d
from mobilenet.models.layers import ConvBNAct

def fuse_bn_act(model: nn.Module) -> int:
    """Replace, in place, every BatchNorm2d directly followed by a ReLU, ReLU6 or Identity in a
    `ConvBNAct` by one `BatchNormAct2d` with the same parameters and buffers (state-dict keys
    unchanged; the activation becomes an Identity). Returns how many were fused."""
    fused = 0
    for module in model.modules():
        if isinstance(module, ConvBNAct) and type(module.bn) is nn.BatchNorm2d and type(module.act) in CLAMPS:
            bn = module.bn
            replacement = BatchNormAct2d(bn.num_features, bn.eps, bn.momentum, type(module.act))
            # the very same parameters and buffers: an optimizer or EMA made before still sees them
            replacement.weight, replacement.bias = bn.weight, bn.bias
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(replacement, name, getattr(bn, name))
            replacement.train(bn.training)
            module.bn, module.act = replacement, nn.Identity()
            fused += 1
    return fused


def _is_depthwise(conv: nn.Conv2d) -> bool:
    """A depthwise convolution `depthwise.c` computes: no bias, no dilation, numeric zero padding."""
    return (conv.groups == conv.in_channels == conv.out_channels > 1 and conv.bias is None
            and conv.dilation == (1, 1) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and conv.kernel_size[0] * conv.kernel_size[1] <= MAX_TAPS)


def _is_pointwise(conv: nn.Conv2d) -> bool:
    return (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding in ((0, 0), "valid")
            and conv.groups == 1 and conv.padding_mode == "zeros")


def _swap_convs(model: nn.Module, kind: type[nn.Conv2d], wanted) -> int:
    """Replace, in place, every plain nn.Conv2d that `wanted` accepts by a `kind` holding the very same
    parameters (state-dict keys unchanged). Returns how many."""
    swapped = 0
    for parent in model.modules():
        for name, conv in parent.named_children():
            if type(conv) is nn.Conv2d and wanted(conv):
                # built without initialising (no random numbers drawn), then given the same parameters
                replacement = nn.utils.skip_init(kind, conv.in_channels, conv.out_channels, conv.kernel_size,
                                                 conv.stride, conv.padding, conv.dilation, conv.groups,
                                                 conv.bias is not None, conv.padding_mode)
                replacement.weight, replacement.bias = conv.weight, conv.bias
                replacement.train(conv.training)
                setattr(parent, name, replacement)
                swapped += 1
    return swapped


def fuse_depthwise(model: nn.Module) -> int:
    """Every depthwise nn.Conv2d the kernel computes (`_is_depthwise`) becomes a `DepthwiseConv2d`."""
    return _swap_convs(model, DepthwiseConv2d, _is_depthwise)


def fuse_pointwise(model: nn.Module) -> int:
    """Every 1x1 nn.Conv2d (stride 1, no padding, one group) becomes a `PointwiseConv2d`."""
    return _swap_convs(model, PointwiseConv2d, _is_pointwise)


# The swaps by name, in the order the trainer's probe tries them (mobilenet.train.amp).
KERNELS = {"bn_act": fuse_bn_act, "depthwise": fuse_depthwise, "pointwise": fuse_pointwise}


def fuse(model: nn.Module, kernels: tuple[str, ...] = tuple(KERNELS)) -> int:
    """The swaps named in `kernels` (all of `KERNELS` by default), in place; returns how many modules
    were swapped."""
    return sum(KERNELS[name](model) for name in kernels)
