"""Swapping the kernels' modules into a model, in place, keeping its parameters, buffers and
state-dict keys: `fuse(model, kernels)`, by the names of `KERNELS`."""

from __future__ import annotations

import torch.fx
from torch import nn

from mobilenet.fused.library import MAX_TAPS
from mobilenet.fused.ops import (CLAMPS, BatchNormAct2d, DeferredBatchNormAct2d, DepthwiseConv2d, NormedDepthwiseConv2d,
                                 PointwiseConv2d)
from mobilenet.models.layers import ConvBNAct

def _norm_like(kind: type[BatchNormAct2d], bn: nn.BatchNorm2d, activation: type[nn.Module]) -> BatchNormAct2d:
    """A `kind` holding `bn`'s very parameters and buffers (an optimizer or EMA made before still sees
    them), in `bn`'s mode."""
    replacement = kind(bn.num_features, bn.eps, bn.momentum, activation)
    replacement.weight, replacement.bias = bn.weight, bn.bias
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(replacement, name, getattr(bn, name))
    return replacement.train(bn.training)


def _conv_like(kind: type[nn.Conv2d], conv: nn.Conv2d) -> nn.Conv2d:
    """A `kind` holding `conv`'s very parameters, in its mode: built without initialising (no random
    numbers drawn), then given them."""
    replacement = nn.utils.skip_init(kind, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                     conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                                     conv.padding_mode)
    replacement.weight, replacement.bias = conv.weight, conv.bias
    return replacement.train(conv.training)


def fuse_bn_act(model: nn.Module) -> int:
    """Replace, in place, every BatchNorm2d directly followed by a ReLU, ReLU6 or Identity in a
    `ConvBNAct` by one `BatchNormAct2d` with the same parameters and buffers (state-dict keys
    unchanged; the activation becomes an Identity). Returns how many were fused."""
    fused = 0
    for module in model.modules():
        if isinstance(module, ConvBNAct) and type(module.bn) is nn.BatchNorm2d and type(module.act) in CLAMPS:
            module.bn, module.act = _norm_like(BatchNormAct2d, module.bn, type(module.act)), nn.Identity()
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
                setattr(parent, name, _conv_like(kind, conv))
                swapped += 1
    return swapped


def fuse_depthwise(model: nn.Module) -> int:
    """Every depthwise nn.Conv2d the kernel computes (`_is_depthwise`) becomes a `DepthwiseConv2d`."""
    return _swap_convs(model, DepthwiseConv2d, _is_depthwise)


def fuse_pointwise(model: nn.Module) -> int:
    """Every 1x1 nn.Conv2d (stride 1, no padding, one group) becomes a `PointwiseConv2d`."""
    return _swap_convs(model, PointwiseConv2d, _is_pointwise)


class _Leaves(torch.fx.Tracer):
    """Traces a model down to the modules without children, each one call in the graph."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return next(module.children(), None) is None


def _norm_then_depthwise(model: nn.Module) -> list[tuple[str, str]]:
    """The (BatchNormAct2d, DepthwiseConv2d) pairs, by qualified name, where the depthwise layer is the
    only consumer of the BatchNorm's output (through Identity modules at most): from the model's traced
    graph, so a residual or any other reader of that activation rules the pair out. None where the
    model does not trace."""
    try:
        graph = _Leaves().trace(model)
    except Exception:  # noqa: BLE001 - control flow on values, or anything else fx cannot follow: no pairs
        return []
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or type(modules[node.target]) is not BatchNormAct2d:
            continue
        user = node
        while len(user.users) == 1:
            user = next(iter(user.users))
            if user.op != "call_module" or type(modules[user.target]) is not nn.Identity:
                break
        if user is not node and user.op == "call_module" and type(modules[user.target]) is DepthwiseConv2d:
            pairs.append((node.target, user.target))
    return pairs


def fuse_bn_depthwise(model: nn.Module) -> int:
    """Each BatchNormAct2d whose output only a DepthwiseConv2d reads (both swapped in before) becomes a
    `DeferredBatchNormAct2d` and that layer a `NormedDepthwiseConv2d`, the two linked, with the very same
    parameters and buffers (state-dict keys unchanged). Returns how many modules were swapped."""
    swapped = 0
    for norm_name, conv_name in _norm_then_depthwise(model):
        norm = model.get_submodule(norm_name)
        deferred = _norm_like(DeferredBatchNormAct2d, norm, norm.activation)
        normed = _conv_like(NormedDepthwiseConv2d, model.get_submodule(conv_name))
        object.__setattr__(deferred, "consumer", normed)  # links, not submodules: each has its own place
        object.__setattr__(normed, "norm", deferred)
        model.set_submodule(norm_name, deferred)
        model.set_submodule(conv_name, normed)
        swapped += 2
    return swapped


# The swaps by name, in the order the trainer's probe tries them (mobilenet.train.amp); bn_depthwise pairs
# modules the first two swapped in.
KERNELS = {"bn_act": fuse_bn_act, "depthwise": fuse_depthwise, "pointwise": fuse_pointwise,
           "bn_depthwise": fuse_bn_depthwise}


def fuse(model: nn.Module, kernels: tuple[str, ...] = tuple(KERNELS)) -> int:
    """The swaps named in `kernels` (all of `KERNELS` by default), in place; returns how many modules
    were swapped."""
    return sum(KERNELS[name](model) for name in kernels)
