"""The CPU training step's own kernels: BatchNorm fused with its activation, and the depthwise
convolution.

A MobileNet's training step spends most of its time outside the pointwise convolutions: PyTorch runs
BatchNorm and the ReLU as separate memory-bound passes over every activation (statistics,
normalise, activation; then the activation's backward and BatchNorm's two backward passes).
`BatchNormAct2d` does the same mathematics in four passes, with a small C kernel (`bn_act.c`).
The depthwise convolutions are few FLOPs over large activations, and oneDNN's backward pass for them
is slow on some CPUs and dtypes (bfloat16 with stride 2 on a Xeon with AMX runs about 30x slower
than fp32); `DepthwiseConv2d` computes the forward pass and both gradients with `depthwise.c`
(whose forward pass also beat oneDNN's on the demo model's layers, which pay a fixed cost per call).
Both kernels are OpenMP C for channels-last float32 and bfloat16 activations, compiled for this CPU
on first use and cached. Anywhere else (CUDA, NCHW, other dtypes, no C compiler) the modules run
PyTorch's own operators, so they are always correct and only sometimes faster.

A 1x1 convolution is a matrix product; `PointwiseConv2d` computes it as one (plain PyTorch, no C).
Where a BatchNormAct2d's output goes only to a depthwise layer, the pair `DeferredBatchNormAct2d` and
`NormedDepthwiseConv2d` leaves the normalising to the depthwise kernels, which apply it to each input
row as they read it, so that activation is never stored.

`fuse(model)` swaps each `ConvBNAct`'s BatchNorm and activation for one `BatchNormAct2d`, each
depthwise `nn.Conv2d` for a `DepthwiseConv2d`, each 1x1 one for a `PointwiseConv2d` and then pairs
the BatchNorms that only a depthwise layer reads with that layer, keeping the
parameters, buffers and state-dict keys, so checkpoints are unchanged. The trainer swaps in only
those its probe finds faster on this machine (`mobilenet.train.amp`).

library.py builds and loads the C library, ops.py holds the modules and their autograd functions,
swap.py the swaps.
"""

from mobilenet.fused.library import TARGET_VARIABLE, available, build, target, unavailable_reason, version
from mobilenet.fused.ops import (BatchNormAct2d, DeferredBatchNormAct2d, DepthwiseConv2d, NormedDepthwiseConv2d,
                                 PointwiseConv2d)
from mobilenet.fused.swap import KERNELS, fuse, fuse_bn_act, fuse_bn_depthwise, fuse_depthwise, fuse_pointwise

__all__ = ["KERNELS", "TARGET_VARIABLE", "BatchNormAct2d", "DeferredBatchNormAct2d", "DepthwiseConv2d",
           "NormedDepthwiseConv2d", "PointwiseConv2d", "available", "build", "fuse", "fuse_bn_act", "fuse_bn_depthwise",
           "fuse_depthwise", "fuse_pointwise", "target", "unavailable_reason", "version"]
