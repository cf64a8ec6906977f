"""Analytic mult-adds and parameters, layer by layer, with the papers' formulas.

The cost is read off the very layers that the model's configuration builds (on PyTorch's `meta`
device, so no memory is touched), then each layer is costed with the V1 paper's formulas (Section
3.1), D_K being the kernel size, M and N the input and output channels, D_F the output size:

    standard convolution   D_K * D_K * M * N * D_F * D_F
    depthwise convolution  D_K * D_K * M * D_F * D_F
    pointwise (1x1)        M * N * D_F * D_F
    fully connected        M * N

Like the papers, we count multiply-accumulates of convolutions and fully connected layers only:
BatchNorm, activations (hard-swish and hard-sigmoid too), the average pools, V2's residual additions
and the channel scaling of V3's squeeze-and-excitation are free, and squeeze-and-excitation costs
its two fully connected layers on the pooled vector, 2 * C * C_squeeze (a test checks these
totals against what PyTorch's FLOP counter sees the model execute). Parameters include BatchNorm's
scale and shift, as the reference implementations' counts do. The resolution multiplier rho enters
here and in the data transforms, never in the model: cost scales with rho squared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from mobilenet.checks import check_resolution
from mobilenet.models import MobileNet, create_model
from mobilenet.models.layers import SqueezeExcite, TFSamePad

KINDS = ("conv", "depthwise", "pointwise", "fc", "se", "pool")


@dataclass(frozen=True)
class LayerCost:
    """One layer of the table. Shapes are (channels, height, width); `vs_standard` is set on the
    pointwise half of a depthwise separable pair: its cost over a standard convolution's."""

    name: str
    operator: str
    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int
    params: int
    vs_standard: float | None = None


@dataclass
class CostReport:
    """A per-layer cost table and its totals for one model at one resolution."""

    model: str
    width_mult: float
    resolution: int
    num_classes: int
    small_input: bool
    layers: list[LayerCost] = field(default_factory=list)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    def share(self, weights_only: bool = True) -> dict[str, tuple[float, float]]:
        """Percent of mult-adds and parameters by layer kind (V1 Table 2). With `weights_only`,
        parameters are those of the convolution and fully connected weights, as in the paper."""
        params = {k: 0 for k in KINDS}
        macs = {k: 0 for k in KINDS}
        for layer in self.layers:
            macs[layer.kind] += layer.macs
            params[layer.kind] += _weight_params(layer) if weights_only else layer.params
        total_macs, total_params = sum(macs.values()), sum(params.values())
        return {k: (100 * macs[k] / total_macs, 100 * params[k] / total_params) for k in KINDS if k != "pool"}

    def to_dict(self) -> dict:
        return {
            "model": self.model, "width_mult": self.width_mult, "resolution": self.resolution,
            "num_classes": self.num_classes, "small_input": self.small_input,
            "macs": self.macs, "params": self.params,
            "layers": [
                {**asdict(layer), "input_shape": list(layer.input_shape), "output_shape": list(layer.output_shape)}
                for layer in self.layers
            ],
        }

    def format(self) -> str:
        """The table as text, one row a layer, totals last."""
        head = (f"{self.model}  width {self.width_mult:g}  resolution {self.resolution}  "
                f"{self.num_classes} classes{'  small input' if self.small_input else ''}")
        cols = f"{'layer':<24} {'operator':<16} {'input':>13} {'output':>13} {'mult-adds':>14} {'params':>11} {'vs conv':>8}"
        rows = [head, "", cols, "-" * len(cols)]
        for layer in self.layers:
            ratio = f"{layer.vs_standard:.4f}" if layer.vs_standard is not None else ""
            rows.append(
                f"{layer.name:<24} {layer.operator:<16} {_shape(layer.input_shape):>13} "
                f"{_shape(layer.output_shape):>13} {layer.macs:>14,} {layer.params:>11,} {ratio:>8}"
            )
        rows.append("-" * len(cols))
        rows.append(f"{'total':<24} {'':<16} {'':>13} {'':>13} {self.macs:>14,} {self.params:>11,}")
        rows.append(f"= {self.macs / 1e6:.1f} million mult-adds, {self.params / 1e6:.2f} million parameters")
        return "\n".join(rows)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _weight_params(layer: LayerCost) -> int:
    """The parameters of a layer's weight alone (no bias, no BatchNorm)."""
    c_in, c_out = layer.input_shape[0], layer.output_shape[0]
    if layer.kind == "fc":
        return c_in * c_out
    if layer.kind == "pool":
        return 0
    if layer.kind == "se":  # two 1x1 layers with biases: c -> squeeze -> c
        squeeze = int(layer.operator.split(">")[1])
        return 2 * c_in * squeeze
    k = int(layer.operator.split()[1].split("x")[0])
    return k * k * (1 if layer.kind == "depthwise" else c_in) * c_out


def check_model_resolution(resolution: int, model: nn.Module) -> int:
    """Validate an input resolution: a number of pixels in range, at least the model's total stride."""
    check_resolution(resolution)
    stride = getattr(model, "output_stride", 1)
    if resolution < stride:
        name = model.config.name if isinstance(model, MobileNet) else type(model).__name__
        raise ValueError(
            f"resolution {resolution} is too small for {name}, whose strides downsample by {stride}: "
            f"use at least {stride}"
        )
    return resolution


def _conv_out(size: int, conv: nn.Conv2d) -> int:
    k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _conv_cost(name: str, conv: nn.Conv2d, shape: tuple[int, int, int], tf_same: bool = False) -> LayerCost:
    m, size, _ = shape
    n, k, s = conv.out_channels, conv.kernel_size[0], conv.stride[0]
    d_f = -(-size // s) if tf_same else _conv_out(size, conv)  # TensorFlow 'SAME': ceil(size / stride)
    if conv.groups == m and m == n and m > 1:
        kind, macs = "depthwise", k * k * m * d_f * d_f
        operator = f"dw {k}x{k}/{s}"
    elif conv.groups == 1:
        kind = "pointwise" if k == 1 else "conv"
        macs = k * k * m * n * d_f * d_f
        operator = f"conv {k}x{k}/{s}"
    else:
        raise ValueError(f"{name}: grouped convolution with groups={conv.groups} is not a MobileNet layer")
    params = sum(p.numel() for p in conv.parameters())
    return LayerCost(name, operator, kind, shape, (n, d_f, d_f), macs, params)


def layer_costs(model: nn.Module, resolution: int) -> list[LayerCost]:
    """Cost each layer of `model` for a square input of side `resolution`.

    Layers are visited in construction order, which for MobileNets is execution order; the
    BatchNorm after a convolution is booked to that convolution's row.
    """
    check_model_resolution(resolution, model)
    shape: tuple[int, int, int] = (model.features[0].conv.in_channels, resolution, resolution)
    rows: list[LayerCost] = []
    tf_same, inside = False, None
    for name, module in model.named_modules():
        short = name.removesuffix(".conv")
        if inside and name.startswith(inside):
            continue  # a part of the squeeze-and-excitation row below
        if isinstance(module, SqueezeExcite):
            c, squeeze = module.reduce.in_channels, module.reduce.out_channels
            params = sum(p.numel() for p in module.parameters())
            rows.append(LayerCost(name, f"se {c}>{squeeze}>{c}", "se", shape, shape, 2 * c * squeeze, params))
            inside = name + "."
        elif isinstance(module, TFSamePad):
            tf_same = True
        elif isinstance(module, nn.Conv2d):
            if module.in_channels != shape[0]:
                raise ValueError(f"{name}: expects {module.in_channels} channels, gets {shape[0]}")
            row = _conv_cost(short, module, shape, tf_same)
            tf_same = False
            if row.kind == "pointwise" and rows and rows[-1].kind == "depthwise":
                dw = rows[-1]
                k = int(dw.operator.split()[1].split("x")[0])
                standard = k * k * dw.input_shape[0] * row.output_shape[0] * row.output_shape[1] ** 2
                row = LayerCost(**{**asdict(row), "vs_standard": (dw.macs + row.macs) / standard})
            rows.append(row)
            shape = row.output_shape
        elif isinstance(module, nn.BatchNorm2d):
            last = rows[-1]
            rows[-1] = LayerCost(**{**asdict(last), "params": last.params + sum(p.numel() for p in module.parameters())})
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            rows.append(LayerCost(name, "avgpool", "pool", shape, (shape[0], 1, 1), 0, 0))
            shape = (shape[0], 1, 1)
        elif isinstance(module, nn.Linear):
            m, n = module.in_features, module.out_features
            params = sum(p.numel() for p in module.parameters())
            rows.append(LayerCost(name, "fc", "fc", (m,), (n,), m * n, params))
            shape = (n, 1, 1)
    return rows


def cost(model: str | nn.Module, resolution: int = 224, **model_kwargs) -> CostReport:
    """The per-layer cost table of a model, given by name (built from `model_kwargs`) or built.

    >>> round(cost("mobilenet_v1", resolution=224).macs / 1e6)  # V1 Table 6
    569
    """
    if isinstance(model, str):
        with torch.device("meta"):
            model = create_model(model, **model_kwargs)
    elif model_kwargs:
        raise ValueError("model arguments are only taken with a model name, not with a built model")
    if not isinstance(model, MobileNet):
        raise ValueError(f"cost() takes a model name or a MobileNet, got {type(model).__name__}")
    config = model.config
    return CostReport(model=config.name, width_mult=config.width_mult, resolution=resolution,
                      num_classes=config.num_classes, small_input=config.small_input,
                      layers=layer_costs(model, resolution))


def separable_ratio(out_channels: int, kernel_size: int = 3) -> float:
    """The V1 paper's saving of a depthwise separable layer over a standard one: 1/N + 1/D_K^2."""
    return 1 / out_channels + 1 / kernel_size**2
