"""PyTorch sources: reading `.pth` / `.safetensors` state dicts safely, and the torchvision and timm
name maps.

Reading never runs code: `.pth` files go through `torch.load(weights_only=True)`, which only
rebuilds tensors and plain containers and refuses any other pickled object (a class, a function):
such a file is refused with a ValueError rather than trusted.

Layouts, from the publishers' code (names only; our model is built by our own code):

torchvision MobileNetV2 (`torchvision/models/mobilenetv2.py`): `features.0` is Conv2dNormActivation
(`.0` conv, `.1` BatchNorm); `features.1`-`features.17` are InvertedResidual with a Sequential
`conv`: with expansion, `conv.0` (1x1 conv + BN), `conv.1` (3x3 depthwise conv + BN), `conv.2`
(1x1 projection conv), `conv.3` (BN); without (block 1), `conv.0` depthwise, `conv.1` projection
conv, `conv.2` BN. `features.18` is the 1x1 head, `classifier.1` the nn.Linear (after Dropout 0.2).
ReLU6, BatchNorm eps 1e-5, symmetric padding.

torchvision MobileNetV3 (`torchvision/models/mobilenetv3.py`): `features.0` and the 1x1 before the
pooling (`features.16` Large, `features.12` Small) are Conv2dNormActivation; each InvertedResidual
has a Sequential `block` of the layers it has, in order: the 1x1 expansion (absent where the
expansion size equals the input), the depthwise convolution, SqueezeExcitation (`fc1`, `fc2`, both
1x1 convolutions with biases) where the row has SE, the projection (each Conv2dNormActivation, `.0`
conv, `.1` BatchNorm). After the pooling, `classifier.0` is an nn.Linear (our 1x1 head convolution)
and `classifier.3` the classifier (after Hardswish and Dropout 0.2). BatchNorm eps 1e-3, symmetric
padding. torchvision scales the expansion and head channels by the width directly, unlike the
authors (and Keras and timm, whose rules we build): the models are the same at width 1.0 only, the
width of every published torchvision V3.

timm (`timm/models/efficientnet.py` `_gen_mobilenet_v1` / `_gen_mobilenet_v2`,
`_efficientnet_blocks.py`, `_efficientnet_builder.py`): `conv_stem` + `bn1`, then `blocks.<stage>.
<index>`; a DepthwiseSeparableConv has `conv_dw`, `bn1`, `conv_pw`, `bn2` (V1's 'dsa' blocks put an
activation after `bn2` and never a shortcut; V2's first 'ds' block has neither), an InvertedResidual
has `conv_pw`, `bn1`, `conv_dw`, `bn2`, `conv_pwl`, `bn3`. V2 ends with `conv_head` + `bn2`, V1
(`head_conv=False`) with nothing; `classifier` is the nn.Linear. ReLU6 (`resolve_act_layer(kwargs,
'relu6')`), nn.BatchNorm2d's eps 1e-5, symmetric padding (`pad_type=''`), dropout 0 by default.
timm rounds every width with `round_channels` (multiples of 8); our V1 uses the paper's
int(c * width), the same numbers at widths 0.25, 0.5, 0.75, 1.0 and 1.25.

timm's V3 and V4 (`timm/models/mobilenetv3.py` `_gen_mobilenet_v3` / `_gen_mobilenet_v4`, the
MobileNetV3 class): `conv_stem` + `bn1`, `blocks.<stage>.<index>` in the stages of TIMM_STAGES, then
after the pooling `conv_head` (V3: with a bias; V4: without, then `norm_head`) and `classifier`. V3's
first block (no expansion) is a DepthwiseSeparableConv (`conv_dw`/`bn1`, `se`, `conv_pw`/`bn2`),
the others InvertedResidual (`conv_pw`/`bn1`, `conv_dw`/`bn2`, `se.conv_reduce`/`se.conv_expand`
with biases, `conv_pwl`/`bn3`); V4's plain convolutions are ConvBnAct (`conv`/`bn1`), its FusedIB an
EdgeResidual (`conv_exp`/`bn1`, `conv_pwl`/`bn2`), its UIB a UniversalInvertedResidual (`dw_start`,
`pw_exp`, `dw_mid`, `pw_proj`, each `.conv`/`.bn`); the 1x1 before the pooling ends the blocks.
BatchNorm eps 1e-5, symmetric padding (the `tf_` ports, with TensorFlow's padding and eps, are not
read), dropout 0 by default.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mobilenet.checks import first_line
from mobilenet.convert.layout import Pair, Plan, Unit, model_units, torch_style_pairs, width_from
from mobilenet.models import create_model, v1, v2, v3, v4
from mobilenet.models.layers import SqueezeExcite

# timm's V1 arch_def: ['dsa_r1_k3_s1_c64'], ['dsa_r2_k3_s2_c128'], ['dsa_r2_k3_s2_c256'],
# ['dsa_r6_k3_s2_c512'], ['dsa_r2_k3_s2_c1024']: our 13 blocks, grouped by stage.
TIMM_V1_REPEATS = (1, 2, 2, 6, 2)
TIMM_V2_REPEATS = tuple(stage.repeats for stage in v2.STAGES)  # (1, 2, 3, 4, 3, 3, 1), as timm's V2 arch_def
TIMM_SUPPORTED = ("mobilenetv1_100", "mobilenetv1_125", "mobilenetv2_050", "mobilenetv2_100", "mobilenetv2_140",
                  "mobilenetv3_large_075", "mobilenetv3_large_100", "mobilenetv3_small_075", "mobilenetv3_small_100",
                  "mobilenetv4_conv_small", "mobilenetv4_conv_medium", "mobilenetv4_conv_large")
# Blocks per stage of timm's V3 and V4 arch_defs (the 1x1 convolution before the pooling is the last
# stage): how its `blocks.<stage>.<index>` number our `features`.
TIMM_STAGES = {
    "mobilenet_v3_large": (1, 2, 3, 4, 2, 3, 1),
    "mobilenet_v3_small": (1, 2, 3, 2, 3, 1),
    "mobilenet_v4_conv_small": (2, 2, 6, 6, 1),
    "mobilenet_v4_conv_medium": (1, 2, 8, 11, 1),
    "mobilenet_v4_conv_large": (1, 2, 11, 13, 1),
}
TIMM_V4_PARTS = {"start": "dw_start", "expand": "pw_exp", "middle": "dw_mid", "project": "pw_proj"}


def _refusal_reason(error: pickle.UnpicklingError) -> str:
    """What the file asked for, in our words: torch's own message goes on to explain how to load
    the file with the safety check off, which is never our advice."""
    text = str(error)
    if match := re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)", text):
        return f"it would call {match.group(1)}"
    if match := re.search(r"Unsupported operand (\d+)", text):
        return f"it uses pickle instruction {match.group(1)}, which plain tensors never need"
    return "it holds a pickled object"


def read_torch_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a state dict saved as `.safetensors` or with `torch.save` (`.pth`, `.pt`,
    `.bin`), without running any code from the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise ValueError(f"{path} is not a readable safetensors file: {first_line(error, 200)}") from None
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols: the refusal below says enough
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} refused: it pickles code or objects, not just tensors ({_refusal_reason(error)}); "
            "only plain state dicts of tensors are read, and nothing from the file was run"
        ) from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError) as error:
        raise ValueError(f"{path} is not a readable PyTorch weights file: {first_line(error, 200)}") from None
    return _state_dict(obj, path)


def _state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict, also out of the usual training-checkpoint wrappers."""
    if isinstance(obj, dict):
        if obj and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
            return dict(obj)
        for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(torch.is_tensor(v) for v in inner.values()):
                return dict(inner)
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict of named tensors")


# --- torchvision -------------------------------------------------------------------------------

def _torchvision_names(unit: Unit) -> tuple[str, str]:
    i = unit.block
    if unit.part in ("stem", "head"):
        return f"features.{i}.0", f"features.{i}.1"
    index = {"expand": 0, "depthwise": 1 if unit.expands else 0}.get(unit.part)
    if index is not None:
        return f"features.{i}.conv.{index}.0", f"features.{i}.conv.{index}.1"
    conv = 2 if unit.expands else 1  # the projection: a bare conv then its BatchNorm
    return f"features.{i}.conv.{conv}", f"features.{i}.conv.{conv + 1}"


def _plan_torchvision_v3(tensors: dict[str, torch.Tensor]) -> Plan:
    """torchvision's MobileNetV3 Large or Small (see the module docstring) onto ours."""
    blocks = {int(m.group(1)) for k in tensors if (m := re.match(r"features\.(\d+)\.", k))}
    arch = next((name for name, (rows, _, _) in v3.VARIANTS.items() if max(blocks) == len(rows) + 1), None)
    if arch is None or "classifier.3.weight" not in tensors:
        raise ValueError(f"unsupported torchvision MobileNetV3: features.0-{max(blocks)} and "
                         f"{'a' if 'classifier.3.weight' in tensors else 'no'} classifier.3; Large has features.0-16, "
                         "Small features.0-12, each with classifier.0 and classifier.3")
    last, last_channels = max(blocks), v3.VARIANTS[arch][1]
    if f"features.{last}.0.weight" in tensors and tensors[f"features.{last}.0.weight"].shape[0] != last_channels:
        raise ValueError(f"torchvision {arch} at another width than 1.0 (features.{last} has "
                         f"{tensors[f'features.{last}.0.weight'].shape[0]} channels, not {last_channels}): "
                         "torchvision scales its channels unlike the authors' rules this package builds, "
                         "so only width 1.0 (every published torchvision V3) is read")
    with torch.device("meta"):
        model = create_model(arch, num_classes=1)

    def layer(unit: Unit) -> int:  # the place of the unit's layer in torchvision's `block`
        return {"expand": 0, "depthwise": int(unit.expands)}.get(unit.part, int(unit.expands) + 1 + has_se(unit.block))

    def has_se(k: int) -> bool:
        return isinstance(getattr(model.features[k], "se", None), SqueezeExcite)

    def names(unit: Unit) -> tuple[str, str]:
        i = unit.block
        if unit.part in ("stem", "head"):
            return f"features.{i}.0", f"features.{i}.1"
        return f"features.{i}.block.{layer(unit)}.0", f"features.{i}.block.{layer(unit)}.1"

    units = model_units(arch)
    pairs = torch_style_pairs(units, names, "classifier.3")
    for unit in units:
        if unit.part == "depthwise" and has_se(unit.block):  # SqueezeExcitation follows the depthwise layer
            k, se = unit.block, layer(unit) + 1
            for ours, theirs in (("reduce", "fc1"), ("expand", "fc2")):
                pairs += [Pair(f"features.{k}.se.{ours}.{p}", f"features.{k}.block.{se}.{theirs}.{p}") for p in ("weight", "bias")]
    pairs += [Pair("head.0.weight", "classifier.0.weight", lambda w: w[:, :, None, None]),  # nn.Linear -> 1x1 conv
              Pair("head.0.bias", "classifier.0.bias")]
    return Plan(arch, 1.0, int(tensors["classifier.3.weight"].shape[0]),
                dict(activation="hardswish", bn_eps=1e-3, padding="symmetric", dropout=0.2), pairs,
                variant=f"torchvision {arch}")


def plan_torchvision(tensors: dict[str, torch.Tensor]) -> Plan:
    """torchvision's MobileNetV2 and MobileNetV3 Large and Small (its MobileNets of the papers)."""
    if any(re.match(r"features\.\d+\.block\.", k) for k in tensors):
        return _plan_torchvision_v3(tensors)
    if "features.1.conv.0.0.weight" not in tensors or "features.0.0.weight" not in tensors:
        raise ValueError("not a torchvision MobileNetV2 or V3 state dict: no 'features.1.conv.0.0.weight' "
                         "(V2) and no 'features.N.block.' (V3)")
    blocks = {int(m.group(1)) for k in tensors if (m := re.match(r"features\.(\d+)\.", k))}
    units = model_units("mobilenet_v2")
    head = units[-1].block
    if max(blocks) != head:
        raise ValueError(f"unsupported torchvision MobileNetV2: features.0-{max(blocks)}, the paper's layout has features.0-{head}")
    if "classifier.1.weight" not in tensors:
        raise ValueError("not a torchvision MobileNetV2 state dict: no classifier.1.weight")
    width = width_from(tensors[f"features.{head - 1}.conv.2.weight"].shape[0], v2.STAGES[-1].out_channels)
    pairs = torch_style_pairs(units, _torchvision_names, "classifier.1")
    return Plan("mobilenet_v2", width, int(tensors["classifier.1.weight"].shape[0]),
                dict(activation="relu6", bn_eps=1e-5, padding="symmetric", dropout=0.2), pairs,
                variant=f"torchvision mobilenet_v2 width {width:g}")


# --- timm --------------------------------------------------------------------------------------

def _timm_names(is_v2: bool):
    repeats = TIMM_V2_REPEATS if is_v2 else TIMM_V1_REPEATS
    starts = [sum(repeats[:s]) + 1 for s in range(len(repeats))]  # our block index of each stage's first block

    def names(unit: Unit) -> tuple[str, str]:
        if unit.part == "stem":
            return "conv_stem", "bn1"
        if unit.part == "head":
            return "conv_head", "bn2"
        stage = max(s for s, start in enumerate(starts) if start <= unit.block)
        block = f"blocks.{stage}.{unit.block - starts[stage]}"
        if not unit.expands:  # DepthwiseSeparableConv: conv_dw/bn1, conv_pw/bn2
            return (f"{block}.conv_dw", f"{block}.bn1") if unit.part == "depthwise" else (f"{block}.conv_pw", f"{block}.bn2")
        return {  # InvertedResidual
            "expand": (f"{block}.conv_pw", f"{block}.bn1"),
            "depthwise": (f"{block}.conv_dw", f"{block}.bn2"),
            "project": (f"{block}.conv_pwl", f"{block}.bn3"),
        }[unit.part]

    return names


def _timm_v3_v4_pairs(arch: str) -> list:
    """The name map of timm's V3 or V4 (see the module docstring) onto ours."""
    stages = TIMM_STAGES[arch]
    place = [(s, i) for s, n in enumerate(stages) for i in range(n)]  # our features[k + 1] is timm's place[k]
    with torch.device("meta"):
        model = create_model(arch, num_classes=1)

    def names(unit: Unit) -> tuple[str, str]:
        if unit.part == "stem":
            return "conv_stem", "bn1"
        stage, index = place[unit.block - 1]
        block = f"blocks.{stage}.{index}"
        if unit.part in ("conv", "head"):  # ConvBnAct
            return f"{block}.conv", f"{block}.bn1"
        if arch in v4.VARIANTS:
            if isinstance(model.features[unit.block], v4.FusedIB):
                return {"expand": (f"{block}.conv_exp", f"{block}.bn1"),
                        "project": (f"{block}.conv_pwl", f"{block}.bn2")}[unit.part]
            return f"{block}.{TIMM_V4_PARTS[unit.part]}.conv", f"{block}.{TIMM_V4_PARTS[unit.part]}.bn"
        if not unit.expands:  # DepthwiseSeparableConv
            return (f"{block}.conv_dw", f"{block}.bn1") if unit.part == "depthwise" else (f"{block}.conv_pw", f"{block}.bn2")
        return {"expand": (f"{block}.conv_pw", f"{block}.bn1"), "depthwise": (f"{block}.conv_dw", f"{block}.bn2"),
                "project": (f"{block}.conv_pwl", f"{block}.bn3")}[unit.part]

    pairs = torch_style_pairs(model_units(arch), names, "classifier")  # the classifier: the same names
    for k, block in enumerate(model.features):
        if not isinstance(getattr(block, "se", None), SqueezeExcite):
            continue
        stage, index = place[k - 1]
        for ours, theirs in (("reduce", "conv_reduce"), ("expand", "conv_expand")):
            pairs += [Pair(f"features.{k}.se.{ours}.{p}", f"blocks.{stage}.{index}.se.{theirs}.{p}") for p in ("weight", "bias")]
    if arch in v4.VARIANTS:  # the 1x1 after the pooling: conv_head + norm_head, as our head ConvBNAct
        pairs += [Pair("head.conv.weight", "conv_head.weight")]
        pairs += [Pair(f"head.bn.{p}", f"norm_head.{p}") for p in ("weight", "bias", "running_mean", "running_var")]
        pairs.append(Pair("head.bn.num_batches_tracked", "norm_head.num_batches_tracked", optional=True))
    else:
        pairs += [Pair("head.0.weight", "conv_head.weight"), Pair("head.0.bias", "conv_head.bias")]
    return pairs


def _plan_timm_v3_v4(tensors: dict[str, torch.Tensor]) -> Plan:
    """timm's `mobilenetv3_large/small_*` and `mobilenetv4_conv_small/medium/large`."""
    stages: dict[int, int] = {}
    for key in tensors:
        if m := re.match(r"blocks\.(\d+)\.(\d+)\.", key):
            stages[int(m.group(1))] = max(stages.get(int(m.group(1)), 0), int(m.group(2)) + 1)
    found = tuple(stages[s] for s in sorted(stages))
    v4_blocks = any(".pw_exp." in key or ".conv_exp." in key for key in tensors)
    arch = next((name for name, layout in TIMM_STAGES.items()
                 if layout == found and (name in v4.VARIANTS) == v4_blocks), None)
    if arch is None:
        raise ValueError(f"unsupported timm MobileNetV{'4' if v4_blocks else '3'}: blocks per stage {found}; supported: "
                         f"{', '.join(name for name in TIMM_SUPPORTED if name.startswith('mobilenetv' + ('4' if v4_blocks else '3')))}")
    if "classifier.weight" not in tensors:
        raise ValueError("the timm state dict has no classifier.weight (a headless or features-only model)")
    last = f"blocks.{len(found) - 1}.0.conv.weight"  # the 1x1 before the pooling
    base = (v4.VARIANTS[arch][0][-1].out_channels if arch in v4.VARIANTS else v3.VARIANTS[arch][1])
    width = width_from(tensors[last].shape[0], base)
    activation = "relu" if arch in v4.VARIANTS else "hardswish"
    timm_name = arch.replace("mobilenet_v", "mobilenetv") + ("" if arch in v4.VARIANTS else f"_{round(width * 100):03d}")
    return Plan(arch, width, int(tensors["classifier.weight"].shape[0]),
                dict(activation=activation, bn_eps=1e-5, padding="symmetric", dropout=0.0), _timm_v3_v4_pairs(arch),
                variant=f"timm {timm_name}")


def plan_timm(tensors: dict[str, torch.Tensor]) -> Plan:
    """timm's `mobilenetv1_*` and `mobilenetv2_*` (EfficientNet class) at the paper's depth, and its
    MobileNetV3 class's `mobilenetv3_*` and `mobilenetv4_conv_*`."""
    if "conv_stem.weight" in tensors and "conv_head.weight" in tensors and (
            any(".se.conv_reduce." in key for key in tensors) or any(".pw_exp." in key for key in tensors)):
        return _plan_timm_v3_v4(tensors)
    if "conv_stem.weight" not in tensors or "blocks.0.0.conv_dw.weight" not in tensors:
        raise ValueError("not a timm EfficientNet-family state dict: no 'conv_stem.weight' / 'blocks.0.0.conv_dw.weight'")
    stages: dict[int, int] = {}
    for key in tensors:
        if m := re.match(r"blocks\.(\d+)\.(\d+)\.", key):
            stages[int(m.group(1))] = max(stages.get(int(m.group(1)), 0), int(m.group(2)) + 1)
    repeats = tuple(stages[s] for s in sorted(stages))
    is_v2 = any(".conv_pwl." in k for k in tensors)
    supported = f"supported: {', '.join(TIMM_SUPPORTED)} (and other widths of the same plain layout)"
    if any(".se." in k or ".conv_s2d." in k for k in tensors):
        raise ValueError(f"unsupported timm model: it has squeeze-excitation or space-to-depth blocks; {supported}")
    expected = TIMM_V2_REPEATS if is_v2 else TIMM_V1_REPEATS
    if repeats != expected:
        raise ValueError(
            f"unsupported timm {'MobileNetV2' if is_v2 else 'MobileNetV1'}: blocks per stage {repeats}, the paper's are "
            f"{expected} (depth-multiplied variants such as mobilenetv2_110d / mobilenetv2_120d are not ours); {supported}"
        )
    if not is_v2 and "conv_head.weight" in tensors:
        raise ValueError(f"unsupported timm MobileNetV1 with a 1x1 head convolution (mobilenetv1_100h); {supported}")
    if "classifier.weight" not in tensors:
        raise ValueError("the timm state dict has no classifier.weight (a headless or features-only model)")
    arch = "mobilenet_v2" if is_v2 else "mobilenet_v1"
    if not is_v2:
        _check_timm_v1_rounding(tensors)
    last = f"blocks.{len(repeats) - 1}.{repeats[-1] - 1}.{'conv_pwl' if is_v2 else 'conv_pw'}.weight"
    base = v2.STAGES[-1].out_channels if is_v2 else v1.BLOCKS[-1].out_channels
    width = width_from(tensors[last].shape[0], base)
    pairs = torch_style_pairs(model_units(arch), _timm_names(is_v2), "classifier")
    timm_name = f"mobilenetv{'2' if is_v2 else '1'}_{round(width * 100):03d}"
    return Plan(arch, width, int(tensors["classifier.weight"].shape[0]),
                dict(activation="relu6", bn_eps=1e-5, padding="symmetric", dropout=0.0), pairs,
                variant=f"timm {timm_name}")


def _check_timm_v1_rounding(tensors: dict[str, torch.Tensor]) -> None:
    """timm rounds V1 channels to multiples of 8, our V1 keeps the paper's int(c * width): refuse
    the widths where the two differ, saying so, rather than with a bare shape mismatch."""
    names = ["conv_stem.weight"] + [f"blocks.{s}.{i}.conv_pw.weight" for s, n in enumerate(TIMM_V1_REPEATS) for i in range(n)]
    if any(name not in tensors for name in names):
        return  # `assemble` names the missing tensor
    theirs = [tensors[name].shape[0] for name in names]
    width = width_from(theirs[-1], v1.BLOCKS[-1].out_channels)
    ours = [unit.out_channels for unit in model_units("mobilenet_v1", width) if unit.part in ("stem", "pointwise")]
    if theirs != ours:
        raise ValueError(
            f"unsupported timm MobileNetV1 width {width:g}: timm rounds channels to multiples of 8 ({theirs[:4]}...), "
            f"our V1 keeps the paper's int(c * width) ({ours[:4]}...); they agree at widths 0.25, 0.5, 0.75, 1.0, 1.25"
        )
