"""The modules the training step swaps in (see the package's docstring) and the autograd functions
that call the C library: `BatchNormAct2d` (bn_act.c), `DepthwiseConv2d` (depthwise.c), the pair
`DeferredBatchNormAct2d` and `NormedDepthwiseConv2d` (both) and `PointwiseConv2d` (a matrix product,
no C)."""

from __future__ import annotations

import torch
from torch import nn

from mobilenet.fused import library

# The activations a BatchNormAct2d can fuse, as the clamp [lo, hi] they are.
CLAMPS: dict[type[nn.Module], tuple[float, float]] = {nn.ReLU: (0.0, float("inf")), nn.ReLU6: (0.0, 6.0),
                                                      nn.Identity: (float("-inf"), float("inf"))}

def _kernel(name: str, dtype: torch.dtype):
    """The C function `name` for activations of `dtype` (the modules checked that the library loads)."""
    return getattr(library.load(), f"{name}_{library.SUFFIX[dtype]}")


def _ptr(t: torch.Tensor | None) -> int | None:
    """A tensor's address for the kernel (None: a null pointer)."""
    return None if t is None else t.data_ptr()


class _BatchNormActFunction(torch.autograd.Function):
    """clamp(batch_norm(x), lo, hi) with the C kernels; x channels-last, float32 or bfloat16."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training: bool, momentum: float, eps: float,
                lo: float, hi: float):
        m, c = x.numel() // x.shape[1], x.shape[1]
        y = torch.empty_like(x, memory_format=torch.channels_last)
        mean, invstd = torch.empty(c), torch.empty(c)
        _kernel("bn_act_forward", x.dtype)(
            _ptr(x), _ptr(y), m, c, _ptr(weight), _ptr(bias), _ptr(running_mean), _ptr(running_var), int(training),
            momentum, eps, lo, hi, _ptr(mean), _ptr(invstd))
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.training, ctx.lo, ctx.hi = training, lo, hi
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        m, c = x.numel() // x.shape[1], x.shape[1]
        dy = dy.to(x.dtype).contiguous(memory_format=torch.channels_last)
        dx = torch.empty_like(x, memory_format=torch.channels_last) if ctx.needs_input_grad[0] else None
        dgamma, dbeta = torch.empty(c), torch.empty(c)
        _kernel("bn_act_backward", x.dtype)(
            _ptr(dy), _ptr(x), _ptr(dx), m, c, _ptr(weight), _ptr(bias), _ptr(mean),
            _ptr(invstd), int(ctx.training), ctx.lo, ctx.hi, _ptr(dgamma), _ptr(dbeta))
        return dx, dgamma, dbeta, None, None, None, None, None, None, None


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm2d followed by an activation (ReLU, ReLU6 or none), one module, as timm names it.

    The parameters, buffers and their names are BatchNorm2d's. On the CPU, for channels-last
    float32 or bfloat16 input, it runs the fused kernel; otherwise BatchNorm2d then the activation.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.activation = activation
        self.lo, self.hi = CLAMPS[activation]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation.__name__}"

    def _fast(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dim() == 4 and x.dtype in library.SUFFIX and self.affine
                and self.momentum is not None and (self.track_running_stats or self.training)
                and x.is_contiguous(memory_format=torch.channels_last) and x.numel() > 0
                and self.weight.dtype == torch.float32 and library.load() is not None)

    def _count_batch(self) -> None:
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)

    def _arguments(self) -> tuple:
        """What the kernels take of this module: weight, bias, the running statistics (or None), whether
        to normalise with batch statistics, momentum, eps and the clamp."""
        tracked = self.track_running_stats
        return (self.weight, self.bias, self.running_mean if tracked else None, self.running_var if tracked else None,
                self.training or not tracked, self.momentum, self.eps, self.lo, self.hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fast(x):
            y = super().forward(x)
            return y if self.activation is nn.Identity else y.clamp(self.lo, self.hi)
        self._count_batch()
        return _BatchNormActFunction.apply(x, *self._arguments())


NO_NORM = (None, None, 0.0, 0.0)  # the depthwise kernels' last arguments where the input is read as it is


def _taps(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A depthwise weight as `depthwise.c` reads it: tap-major (taps x channels), rounded to the
    activations' dtype as autocast would, in float32."""
    return weight.to(dtype).float().reshape(weight.shape[0], -1).t().contiguous()


def _conv_shape(x: torch.Tensor, weight: torch.Tensor, stride, padding) -> tuple[int, ...]:
    """The depthwise kernels' shape arguments: n, h, w, c, oh, ow, kh, kw, strides, paddings."""
    (n, c, h, w), (kh, kw) = x.shape, weight.shape[2:]
    oh, ow = (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1
    return n, h, w, c, oh, ow, kh, kw, *stride, *padding


def _conv_output(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """An empty channels-last output of the depthwise layer of these shape arguments."""
    n, _, _, c, oh, ow = shape[:6]
    return torch.empty((n, c, oh, ow), dtype=x.dtype, memory_format=torch.channels_last)


def _weight_gradient(dy: torch.Tensor, x: torch.Tensor, shape: tuple[int, ...], norm: tuple,
                     dtype: torch.dtype) -> torch.Tensor:
    """The depthwise weight's gradient from `dw_backward_weight` (x read through `norm`, the kernels'
    last four arguments), shaped as the module's weight (c x 1 x kh x kw) in its `dtype`."""
    c, kh, kw = shape[3], shape[6], shape[7]
    dtaps = torch.empty(kh * kw, c)  # tap-major, as the kernel writes it
    _kernel("dw_backward_weight", x.dtype)(_ptr(dy), _ptr(x), _ptr(dtaps), *shape, *norm)
    return dtaps.t().reshape(c, 1, kh, kw).to(dtype)


class _DepthwiseFunction(torch.autograd.Function):
    """A depthwise convolution (no bias) with `depthwise.c`'s forward and backward passes; x
    channels-last, float32 or bfloat16, the weight rounded to x's dtype as autocast would (so the
    product is the one bf16 autocast computes) and its gradient returned in the weight's own dtype (not
    rounded to bfloat16 first, as autocast's cast would)."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        shape, taps = _conv_shape(x, weight, stride, padding), _taps(weight, x.dtype)
        y = _conv_output(x, shape)
        _kernel("dw_forward", x.dtype)(_ptr(x), _ptr(taps), _ptr(y), *shape, *NO_NORM)
        ctx.save_for_backward(x, taps)
        ctx.shape, ctx.weight_dtype = shape, weight.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, taps = ctx.saved_tensors
        dy = dy.to(x.dtype).contiguous(memory_format=torch.channels_last)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty_like(x, memory_format=torch.channels_last)
            _kernel("dw_backward_input", x.dtype)(_ptr(dy), _ptr(taps), _ptr(dx), *ctx.shape)
        return dx, _weight_gradient(dy, x, ctx.shape, NO_NORM, ctx.weight_dtype), None, None


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise nn.Conv2d (groups = in = out channels, no bias) computed, while training on the CPU
    with channels-last float32 or bfloat16 input (bfloat16 also under autocast), by `depthwise.c`;
    otherwise it is nn.Conv2d. Parameters and their names are nn.Conv2d's."""

    def _fast(self, x: torch.Tensor, dtype: torch.dtype) -> bool:
        # what the kernel needs of the module itself was checked once, when it was swapped in (_is_depthwise);
        # an image smaller than the kernel with its padding goes to PyTorch, which says so
        return (torch.is_grad_enabled() and x.dim() == 4 and dtype in library.SUFFIX and x.shape[1] == self.groups
                and x.numel() > 0 and x.is_contiguous(memory_format=torch.channels_last)
                and all(x.shape[2 + i] + 2 * self.padding[i] >= self.kernel_size[i] for i in (0, 1))
                and library.load() is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if not self._fast(x, dtype):
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            return _DepthwiseFunction.apply(x.to(dtype), self.weight, self.stride, self.padding)


class _NormedDepthwiseFunction(torch.autograd.Function):
    """depthwise(clamp(batch_norm(x), lo, hi)) with the normalised activation never stored: the
    statistics are one pass over x (`bn_act.c` without its output), and the depthwise kernels apply
    BatchNorm and the clamp to each input row as they read it (forward, and again for the weight
    gradient); the backward pass is the depthwise input gradient, then `bn_act.c`'s backward on it.
    The same arithmetic as BatchNormAct2d then DepthwiseConv2d, two passes over the activation fewer."""

    @staticmethod
    def forward(ctx, x, bn_weight, bn_bias, running_mean, running_var, training: bool, momentum: float, eps: float,
                lo: float, hi: float, weight, stride, padding):
        c = x.shape[1]
        mean, invstd, scale, shift = (torch.empty(c) for _ in range(4))
        _kernel("bn_act_forward", x.dtype)(
            _ptr(x), None, x.numel() // c, c, _ptr(bn_weight), _ptr(bn_bias), _ptr(running_mean), _ptr(running_var),
            int(training), momentum, eps, lo, hi, _ptr(mean), _ptr(invstd))
        library.load().bn_scale_shift(c, _ptr(bn_weight), _ptr(bn_bias), _ptr(mean), _ptr(invstd), _ptr(scale),
                                      _ptr(shift))
        shape, taps = _conv_shape(x, weight, stride, padding), _taps(weight, x.dtype)
        y = _conv_output(x, shape)
        _kernel("dw_forward", x.dtype)(_ptr(x), _ptr(taps), _ptr(y), *shape, _ptr(scale), _ptr(shift), lo, hi)
        ctx.save_for_backward(x, taps, bn_weight, bn_bias, mean, invstd, scale, shift)
        ctx.shape, ctx.weight_dtype, ctx.training, ctx.lo, ctx.hi = shape, weight.dtype, training, lo, hi
        return y

    @staticmethod
    def backward(ctx, dy):
        x, taps, bn_weight, bn_bias, mean, invstd, scale, shift = ctx.saved_tensors
        c = x.shape[1]
        dy = dy.to(x.dtype).contiguous(memory_format=torch.channels_last)
        dz = torch.empty_like(x, memory_format=torch.channels_last)  # the gradient at the normalised activation
        _kernel("dw_backward_input", x.dtype)(_ptr(dy), _ptr(taps), _ptr(dz), *ctx.shape)
        dweight = _weight_gradient(dy, x, ctx.shape, (_ptr(scale), _ptr(shift), ctx.lo, ctx.hi), ctx.weight_dtype)
        dx = torch.empty_like(x, memory_format=torch.channels_last) if ctx.needs_input_grad[0] else None
        dgamma, dbeta = torch.empty(c), torch.empty(c)
        _kernel("bn_act_backward", x.dtype)(
            _ptr(dz), _ptr(x), _ptr(dx), x.numel() // c, c, _ptr(bn_weight), _ptr(bn_bias), _ptr(mean), _ptr(invstd),
            int(ctx.training), ctx.lo, ctx.hi, _ptr(dgamma), _ptr(dbeta))
        return dx, dgamma, dbeta, None, None, None, None, None, None, None, dweight, None, None


class DeferredBatchNormAct2d(BatchNormAct2d):
    """A BatchNormAct2d whose output goes only to one depthwise layer, a `NormedDepthwiseConv2d`. When
    that layer can normalise its input as it reads it (both modules' kernels apply, at the same dtype),
    this module passes its input on untouched and tells the layer to (`deferred`); otherwise it is
    BatchNormAct2d. Parameters, buffers and their names are BatchNorm2d's."""

    deferred = False  # set by each forward call, taken back by the depthwise layer's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        consumer = self.__dict__.get("consumer")  # not a submodule: it has its own place in the model
        self.deferred = consumer is not None and self._fast(x) and consumer.normalises(x)
        if not self.deferred:
            return super().forward(x)
        self._count_batch()
        return x


class NormedDepthwiseConv2d(DepthwiseConv2d):
    """A DepthwiseConv2d whose input is a `DeferredBatchNormAct2d`'s (its `norm`): when that module
    deferred its work, this one computes depthwise(activation(batch_norm(x))) in one
    `_NormedDepthwiseFunction`; otherwise it is DepthwiseConv2d."""

    def normalises(self, x: torch.Tensor) -> bool:
        """Whether this layer's kernels take x, un-normalised, at x's own dtype."""
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        return x.device.type == "cpu" and dtype == x.dtype and self._fast(x, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.__dict__["norm"]
        if not norm.deferred:
            return super().forward(x)
        norm.deferred = False
        with torch.autocast("cpu", enabled=False):
            return _NormedDepthwiseFunction.apply(x, *norm._arguments(), self.weight, self.stride, self.padding)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 nn.Conv2d (stride 1, no padding, one group) computed, on the CPU for channels-last input,
    as the matrix product it is: an N x C x H x W channels-last tensor is an (N*H*W) x C matrix, so the
    forward pass is one `mm` and autograd's backward two, with no copies. oneDNN's convolutions are
    slower for these shapes where the images are small (at 2x2 and 1x1 pixels the bfloat16 gradients
    ran 7-13x slower than the same products). Parameters and their names are nn.Conv2d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x)
        n, c, h, w = x.shape
        y = torch.mm(x.permute(0, 2, 3, 1).reshape(n * h * w, c), self.weight.reshape(self.out_channels, c).t())
        if self.bias is not None:
            y = y + self.bias
        return y.view(n, h, w, self.out_channels).permute(0, 3, 1, 2)
