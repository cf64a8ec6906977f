"""Our side of every conversion: the convolution + BatchNorm units of our models, and the one
function that fills our state dict from a source's tensors through an explicit name map.

Each source (torchvision, timm, Keras) only says how it names each unit; `assemble` then insists
on a bijection: every source tensor goes to exactly one of ours, every one of ours comes from the
source (BatchNorm's `num_batches_tracked`, a PyTorch-only counter, excepted), and every shape
matches after the source's layout is transposed to ours. Anything else is refused with a one-line
ValueError naming the first offending tensor: a silent partial load is the bug this prevents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from mobilenet.models import ConvBNAct, create_model

BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class Unit:
    """One convolution + BatchNorm of our model: `prefix` is its module path (`prefix.conv`,
    `prefix.bn`), `block` its index in `features`, `part` its role in the papers' terms,
    `out_channels` its width, `expands` whether its block has an expansion layer (V2, t > 1)."""

    prefix: str
    block: int
    part: str  # 'stem', 'depthwise', 'pointwise' (V1), 'expand', 'project' (V2-V4), 'head' (V2-V4), 'conv',
    #            'start', 'middle' (V4)
    out_channels: int
    expands: bool = False


IMPORTABLE = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "mobilenet_v4_conv_small",
              "mobilenet_v4_conv_medium", "mobilenet_v4_conv_large")


def model_units(arch: str, width_mult: float = 1.0) -> list[Unit]:
    """Our units in forward order, read off the model itself, built from its tables on the meta
    device (no memory, no time): the name maps never restate the architecture."""
    if arch not in IMPORTABLE:
        raise ValueError(f"no weight import for {arch!r}")
    with torch.device("meta"):
        model = create_model(arch, width_mult=width_mult, num_classes=1)
    units = []
    last = len(model.features) - 1
    for i, block in enumerate(model.features):
        if isinstance(block, ConvBNAct):  # the stem, the 1x1 before the pooling, V4's plain convolutions
            part = "stem" if i == 0 else "head" if i == last else "conv"
            units.append(Unit(f"features.{i}", i, part, block.conv.out_channels))
            continue
        expands = isinstance(getattr(block, "expand", None), ConvBNAct)
        units += [Unit(f"features.{i}.{name}", i, name, part.conv.out_channels, expands)
                  for name, part in block.named_children() if isinstance(part, ConvBNAct)]
    assert units[0].part == "stem" and (arch == "mobilenet_v1" or units[-1].block == last)
    return units


Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Pair:
    """Our tensor `ours` comes from the source tensor `source`, through `transform` (a layout
    change, e.g. HWIO -> OIHW). `source=None`: nothing in the source (BatchNorm's batch counter,
    which then starts at 0); `optional`: taken when the source has it, else 0."""

    ours: str
    source: str | None
    transform: Transform | None = None
    optional: bool = False


@dataclass
class Plan:
    """What a source file is and how to rebuild it as our model."""

    arch: str  # our registry name
    width: float
    num_classes: int
    options: dict  # activation, bn_eps, padding, dropout: the source's conventions
    pairs: list[Pair]
    variant: str  # how the source calls this model, for messages and metadata

    def describe(self) -> str:
        return f"{self.arch} width {self.width:g} with {self.num_classes} classes"


def torch_style_pairs(units: list[Unit], names: Callable[[Unit], tuple[str, str]], classifier: str) -> list[Pair]:
    """Pairs for a PyTorch source whose conv and BatchNorm of `unit` are the modules `names(unit)`
    and whose classifier is the nn.Linear `classifier`: same layouts as ours, names differ."""
    pairs = []
    for unit in units:
        conv, bn = names(unit)
        pairs.append(Pair(f"{unit.prefix}.conv.weight", f"{conv}.weight"))
        pairs += [Pair(f"{unit.prefix}.bn.{p}", f"{bn}.{p}") for p in BN_PARAMS]
        pairs.append(Pair(f"{unit.prefix}.bn.num_batches_tracked", f"{bn}.num_batches_tracked", optional=True))
    pairs += [Pair("classifier.weight", f"{classifier}.weight"), Pair("classifier.bias", f"{classifier}.bias")]
    return pairs


def assemble(
    plan: Plan, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
    where: Callable[[str], str] = repr,
) -> dict[str, torch.Tensor]:
    """Our state dict, filled from `tensors` through `plan.pairs`, or a one-line ValueError.

    `expected` is our freshly built model's state dict (names, shapes, dtypes); `where(name)`
    says where a source tensor lives in its file, for messages.
    """
    by_ours = {pair.ours: pair for pair in plan.pairs}
    sources = [pair.source for pair in plan.pairs if pair.source is not None]
    if len(by_ours) != len(plan.pairs) or len(set(sources)) != len(sources):  # a bug in a name map, not in the file
        raise AssertionError(f"the {plan.variant} name map is not one-to-one")
    if set(by_ours) != set(expected):
        stray = sorted(set(by_ours) ^ set(expected))[0]
        raise AssertionError(f"the {plan.variant} name map and our {plan.arch} disagree on {stray}")

    mapped = set(sources)
    for name, value in tensors.items():
        if name not in mapped:
            raise ValueError(
                f"source tensor {where(name)} {tuple(value.shape)} has no place in our {plan.describe()} "
                f"({plan.variant}): refusing to drop it"
            )
    state: dict[str, torch.Tensor] = {}
    for ours, reference in expected.items():
        pair = by_ours[ours]
        if pair.source is None or (pair.optional and pair.source not in tensors):
            state[ours] = torch.zeros_like(reference)
            continue
        if pair.source not in tensors:
            raise ValueError(f"the source lacks {where(pair.source)}, which our {ours} needs ({plan.variant})")
        value = tensors[pair.source]
        converted = pair.transform(value) if pair.transform else value
        if tuple(converted.shape) != tuple(reference.shape):
            shape = f"{tuple(value.shape)}" + (f", {tuple(converted.shape)} in our layout," if pair.transform else "")
            raise ValueError(
                f"shape mismatch: {where(pair.source)} is {shape} but our {ours} is {tuple(reference.shape)} "
                f"in {plan.describe()} ({plan.variant})"
            )
        if converted.is_floating_point() != reference.is_floating_point():
            raise ValueError(f"{where(pair.source)} has dtype {converted.dtype}, our {ours} needs {reference.dtype}")
        state[ours] = converted.detach().to(dtype=reference.dtype).contiguous().clone()
    return state


def width_from(channels: int, base: int) -> float:
    """The width multiplier that scales `base` channels to `channels` (rounded to 4 decimals: the
    published multipliers are short decimals, and the shape checks catch any other reading)."""
    return round(channels / base, 4)
