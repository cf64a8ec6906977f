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

`fuse(model)` swaps each `ConvBNAct`'s BatchNorm and activation for one `BatchNormAct2d`, each
depthwise `nn.Conv2d` for a `DepthwiseConv2d` and each 1x1 one for a `PointwiseConv2d`, keeping the
parameters, buffers and state-dict keys, so checkpoints are unchanged. The trainer swaps in only
those its probe finds faster on this machine (`mobilenet.train.amp`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from mobilenet import cache
from mobilenet.machine import cpu_flags, cpu_name

SOURCES = [Path(__file__).with_name(name) for name in ("bn_act.c", "depthwise.c")]
HEADERS = [Path(__file__).with_name("common.h")]
FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC"]  # and -march (`target()`)
# The CPU the kernels are compiled for: this one by default. Another gcc -march value builds the code
# path of that CPU class, so tests can check it on any machine that runs it: `x86-64-v3` (AVX2 and FMA,
# no AVX-512), `x86-64` (the portable vector code, no AVX at all).
TARGET_VARIABLE = "MOBILENET_FUSED_MARCH"
MAX_TAPS = 64  # depthwise.c's largest kernel (8x8)
# The activations a BatchNormAct2d can fuse, as the clamp [lo, hi] they are.
CLAMPS: dict[type[nn.Module], tuple[float, float]] = {nn.ReLU: (0.0, float("inf")), nn.ReLU6: (0.0, 6.0),
                                                      nn.Identity: (float("-inf"), float("inf"))}

SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}  # activation dtypes the kernel takes

_library: ctypes.CDLL | None = None
_why_not: str | None = None  # why the kernel is unavailable, once we know


def kernel_folder() -> Path:
    return cache.folder() / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def target() -> str:
    """gcc's -march for the kernels: $MOBILENET_FUSED_MARCH, else `native` (this CPU)."""
    return os.environ.get(TARGET_VARIABLE) or "native"


def _flags() -> list[str]:
    return [*FLAGS, f"-march={target()}"]


def _library_path(compiler: str) -> Path:
    """The compiled kernel's path, keyed by everything it depends on: the source, the compiler and
    its flags, and this CPU (-march=native)."""
    texts = [path.read_text() for path in SOURCES + HEADERS]
    key = "\n".join([*texts, compiler, " ".join(_flags()), cpu_name(), " ".join(cpu_flags())])
    return kernel_folder() / f"kernels-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def _checksum_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _intact(library: Path) -> bool:
    """Whether the cached library is the one built here: its SHA-256 is the one recorded beside it
    when it was built. Anything else (truncated, replaced, no record) is never loaded: a truncated
    library crashes the process with SIGBUS when mapped, and another one runs its own code."""
    from mobilenet.files import file_digest

    try:
        return _checksum_path(library).read_text().strip() == file_digest(library, "sha256")
    except OSError:
        return False


def build() -> Path:
    """Compile the kernel for this CPU (if not already cached and intact) and return the library's
    path. Raises RuntimeError with the compiler's own message when it cannot be built."""
    from mobilenet.files import file_digest, write_text

    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (cc, gcc or $CC)")
    path = _library_path(compiler)
    if path.exists():
        if _intact(path):
            return path
        print(f"note: the compiled kernels {path} do not match the checksum recorded when they were built; "
              "building them again", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"compiling the training kernels for this CPU (once; kept in {path.parent})", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as folder:
        built = Path(folder) / path.name
        result = subprocess.run([compiler, *_flags(), "-o", str(built), *map(str, SOURCES)], capture_output=True,
                                text=True)
        if result.returncode != 0:
            message = (result.stderr.strip().splitlines() or ["failed"])[-1]
            raise RuntimeError(f"{compiler} could not build {', '.join(p.name for p in SOURCES)}: {message}")
        digest = file_digest(built, "sha256")
        os.replace(built, path)  # atomic: a concurrent process sees no library or a whole one
        write_text(_checksum_path(path), digest + "\n")  # the record that lets it be loaded
    return path


def _load() -> ctypes.CDLL | None:
    """The kernel library, built on first use; None (and a one-line note on stderr) if it cannot be."""
    global _library, _why_not
    if _library is not None or _why_not is not None:
        return _library
    if os.environ.get("MOBILENET_FUSED", "1") == "0":
        _why_not = "turned off by MOBILENET_FUSED=0"
        return None
    try:
        library = ctypes.CDLL(str(build()))  # after torch: it shares torch's OpenMP runtime (libgomp.so.1)
    except (RuntimeError, OSError) as error:
        _why_not = str(error).splitlines()[0]
        print(f"note: training kernels unavailable ({_why_not}); using PyTorch's BatchNorm and convolutions",
              file=sys.stderr)
        return None
    pointer, size, number, flag = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    for suffix in SUFFIX.values():
        getattr(library, f"bn_act_forward_{suffix}").argtypes = [
            pointer, pointer, size, size, pointer, pointer, pointer, pointer, flag, number, number, number, number,
            pointer, pointer]
        getattr(library, f"bn_act_backward_{suffix}").argtypes = [
            pointer, pointer, pointer, size, size, pointer, pointer, pointer, pointer, flag, number, number,
            pointer, pointer]
        for pass_ in ("forward", "backward_input", "backward_weight"):
            getattr(library, f"dw_{pass_}_{suffix}").argtypes = [pointer] * 3 + [size] * 12
    _library = library
    return library


def available() -> bool:
    """Whether the kernels run on this machine (building them if needed)."""
    return _load() is not None


def unavailable_reason() -> str | None:
    _load()
    return _why_not


def version() -> str:
    """What the kernels' speed depends on besides the CPU: their compiled library's name (a hash of the
    sources, compiler and flags), or why they are unavailable. Part of the speed probes' cache keys."""
    compiler = _compiler()
    return _library_path(compiler).stem if available() and compiler else f"unavailable: {_why_not}"


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
        getattr(_library, f"bn_act_forward_{SUFFIX[x.dtype]}")(
            _ptr(x), _ptr(y), m, c, _ptr(weight), _ptr(bias), _ptr(running_mean), _ptr(running_var), int(training), momentum, eps, lo, hi,
            _ptr(mean), _ptr(invstd))
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
        getattr(_library, f"bn_act_backward_{SUFFIX[x.dtype]}")(
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
        return (x.device.type == "cpu" and x.dim() == 4 and x.dtype in SUFFIX and self.affine
                and self.momentum is not None and (self.track_running_stats or self.training)
                and x.is_contiguous(memory_format=torch.channels_last) and x.numel() > 0
                and self.weight.dtype == torch.float32 and _load() is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fast(x):
            y = super().forward(x)
            return y if self.activation is nn.Identity else y.clamp(self.lo, self.hi)
        training = self.training or not self.track_running_stats
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        return _BatchNormActFunction.apply(x, self.weight, self.bias, self.running_mean if self.track_running_stats
                                           else None, self.running_var if self.track_running_stats else None,
                                           training, self.momentum, self.eps, self.lo, self.hi)


class _DepthwiseFunction(torch.autograd.Function):
    """A depthwise convolution (no bias) with `depthwise.c`'s forward and backward passes; x
    channels-last, float32 or bfloat16, the weight rounded to x's dtype as autocast would (so the
    product is the one bf16 autocast computes) and its gradient returned in the weight's own dtype (not
    rounded to bfloat16 first, as autocast's cast would)."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        (n, c, h, w), (kh, kw) = x.shape, weight.shape[2:]
        oh, ow = (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1
        taps = weight.to(x.dtype).float().reshape(c, kh * kw).t().contiguous()  # tap-major, as the kernel reads it
        y = torch.empty((n, c, oh, ow), dtype=x.dtype, memory_format=torch.channels_last)
        shape = (n, h, w, c, oh, ow, kh, kw, *stride, *padding)
        getattr(_library, f"dw_forward_{SUFFIX[x.dtype]}")(_ptr(x), _ptr(taps), _ptr(y), *shape)
        ctx.save_for_backward(x, taps)
        ctx.shape, ctx.weight_dtype = shape, weight.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, taps = ctx.saved_tensors
        n, h, w, c, oh, ow, kh, kw = ctx.shape[:8]
        dy = dy.to(x.dtype).contiguous(memory_format=torch.channels_last)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty_like(x, memory_format=torch.channels_last)
            getattr(_library, f"dw_backward_input_{SUFFIX[x.dtype]}")(_ptr(dy), _ptr(taps), _ptr(dx), *ctx.shape)
        dtaps = torch.empty(kh * kw, c)
        getattr(_library, f"dw_backward_weight_{SUFFIX[x.dtype]}")(_ptr(dy), _ptr(x), _ptr(dtaps), *ctx.shape)
        return dx, dtaps.t().reshape(c, 1, kh, kw).to(ctx.weight_dtype), None, None


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise nn.Conv2d (groups = in = out channels, no bias) computed, while training on the CPU
    with channels-last float32 or bfloat16 input (bfloat16 also under autocast), by `depthwise.c`;
    otherwise it is nn.Conv2d. Parameters and their names are nn.Conv2d's."""

    def _fast(self, x: torch.Tensor, dtype: torch.dtype) -> bool:
        # what the kernel needs of the module itself was checked once, when it was swapped in (_is_depthwise);
        # an image smaller than the kernel with its padding goes to PyTorch, which says so
        return (torch.is_grad_enabled() and x.dim() == 4 and dtype in SUFFIX and x.shape[1] == self.groups
                and x.numel() > 0 and x.is_contiguous(memory_format=torch.channels_last)
                and all(x.shape[2 + i] + 2 * self.padding[i] >= self.kernel_size[i] for i in (0, 1))
                and _load() is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if not self._fast(x, dtype):
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            return _DepthwiseFunction.apply(x.to(dtype), self.weight, self.stride, self.padding)


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


def fuse_bn_act(model: nn.Module) -> int:
    """Replace, in place, every BatchNorm2d directly followed by a ReLU, ReLU6 or Identity in a
    `ConvBNAct` by one `BatchNormAct2d` with the same parameters and buffers (state-dict keys
    unchanged; the activation becomes an Identity). Returns how many were fused."""
    from mobilenet.models.layers import ConvBNAct

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


__all__ = ["KERNELS", "BatchNormAct2d", "DepthwiseConv2d", "PointwiseConv2d", "available", "build", "fuse",
           "fuse_bn_act", "fuse_depthwise", "fuse_pointwise", "unavailable_reason", "version"]
