"""Keras sources: Keras applications' MobileNet, MobileNetV2 and MobileNetV3 weights in HDF5 (or a
Keras 3 `.keras` zip), read with h5py (no TensorFlow), and their name map.

Four layouts are read:
- Keras 2 weights file (`model.save_weights('x.h5')`, the layout of the published
  `mobilenet_1_0_224_tf.h5` ...): the root's attribute `layer_names` lists the layers; each layer
  group's attribute `weight_names` lists its weights, stored at `<layer>/<weight name>`, e.g.
  `conv_dw_1/conv_dw_1/depthwise_kernel:0`.
- Keras 2 full model (`model.save('x.h5')`): the same under a `model_weights` group.
- Keras 3 weights file (`x.weights.h5`, and the same file as `model.weights.h5` inside a `.keras`
  zip): `layers/<class>_<n>/vars/<i>` (TF-Keras 2.13: `_layer_checkpoint_dependencies/...`). Layers
  are not stored under the applications' names but under Keras's per-class names numbered in
  creation order (`conv2d`, `conv2d_1`, ..., `depthwise_conv2d_12`, `batch_normalization_26`,
  `dense`); weightless layers keep an empty `vars`. The applications' names come back from each
  class's order (`_application_names`). Variables are unnamed, in order: Conv2D kernel then bias,
  DepthwiseConv2D kernel, BatchNormalization gamma, beta, moving_mean, moving_variance, Dense
  kernel then bias.
Every weight is named here `<layer>/<role>` (`conv1/kernel`, `conv1_bn/gamma`, ...), a depthwise
kernel's role being `kernel` too.

Layer names and conventions, from `keras/src/applications/mobilenet.py` and `mobilenet_v2.py`:
V1: `conv1` + `conv1_bn`, then for i = 1..13 `conv_dw_i` (DepthwiseConv2D) + `conv_dw_i_bn` and
`conv_pw_i` + `conv_pw_i_bn`, then global pooling, Dropout(1e-3) and `conv_preds`, a 1x1 Conv2D
with bias as classifier. Widths int(c * alpha), as ours.
V2: `Conv1` + `bn_Conv1`; block 0 `expanded_conv_depthwise` / `_BN`, `expanded_conv_project` / `_BN`;
blocks 1..16 `block_i_expand` / `_BN`, `block_i_depthwise` / `_BN`, `block_i_project` / `_BN`; head
`Conv_1` + `Conv_1_bn`; Dense classifier `Logits` in the published files (keras_applications),
`predictions` in today's Keras. Channels _make_divisible(int(c * alpha), 8), equal to ours at the
published alphas.
V3 (`mobilenet_v3.py`): `conv` + `conv_bn`; block 0 `expanded_conv_depthwise` / `_bn`, then
`expanded_conv_i_expand`, `_depthwise`, `_squeeze_excite_conv` and `_squeeze_excite_conv_1` (1x1 with
biases: reduce, expand), `_project`, each with `_bn` but the squeeze-and-excitation; head `conv_1` +
`conv_1_bn`, then after the pooling `conv_2` (a 1x1 Conv2D with bias, as ours) and `logits`.
Hard-swish, hard sigmoid as ReLU6(x + 3) / 6; the model rescales 0..255 to -1..1 itself. Its stem
keeps 16 channels at every alpha (equal to ours at the published 1.0 and 0.75, not at 0.5 and less).
V1 and V2: ReLU6. All: BatchNormalization epsilon 1e-3, kernels HWIO (`(kh, kw, in, out)`), depthwise kernels
`(kh, kw, channels, 1)`. A stride-2 layer pads zero rows/columns at the bottom/right only
(`ZeroPadding2D(((0, 1), (0, 1)))` or `correct_pad`, then 'valid'), others pad 'same': TensorFlow's
'SAME' rule, our `padding="tf_same"` (for V1 exactly so when each stride-2 layer sees an even size,
as at 224 and every multiple of 32; V2's `correct_pad` is 'SAME' at any size).
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from mobilenet.checks import first_line, some
from mobilenet.convert.layout import BN_PARAMS, Pair, Plan, Unit, model_units, width_from
from mobilenet.models import v1, v2, v3

BN_ROLES = ("gamma", "beta", "moving_mean", "moving_variance")  # Keras's names, in its order
KERAS3_ROLES = {1: ("kernel",), 2: ("kernel", "bias"), 4: BN_ROLES}  # by number of variables in a layer
KERAS_ZIP_WEIGHTS = "model.weights.h5"  # the weights inside a Keras 3 `.keras` zip, in the `.weights.h5` layout
GENERIC_NAME = re.compile(r"([a-z0-9_]+?)(?:_(\d+))?")  # Keras 3's per-class layer names: conv2d, conv2d_1, ...
KERAS_RESOLUTION = re.compile(r"_(96|128|160|192|224)(?:_tf)?(?:_no_top)?\.h5$")


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("reading Keras .h5 files needs h5py: pip install h5py") from None
    return h5py


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _open_h5(path: Path):
    """An h5py File of a Keras HDF5 file, or of the `model.weights.h5` inside a `.keras` zip."""
    h5py = _h5py()
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                if KERAS_ZIP_WEIGHTS not in archive.namelist():
                    raise ValueError(f"{path} is a zip file without {KERAS_ZIP_WEIGHTS}: not a Keras 3 .keras model")
                data = archive.read(KERAS_ZIP_WEIGHTS)
        except (zipfile.BadZipFile, OSError) as error:
            raise ValueError(f"{path} is not a readable .keras file: {error}") from None
        source = io.BytesIO(data)
    else:
        source = path
    try:
        return h5py.File(source, "r")
    except OSError as error:
        raise ValueError(f"{path} is not a readable HDF5 file: {first_line(error)}") from None


def read_keras_h5(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The weights of a Keras HDF5 file (or `.keras` zip) as `{'<layer>/<role>': tensor}` in
    Keras's own layout, under the applications' layer names, and where each one lives in the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    h5py = _h5py()
    tensors: dict[str, torch.Tensor] = {}
    places: dict[str, str] = {}

    def put(key: str, place: str, dataset) -> None:
        if key in tensors:
            raise ValueError(f"{path}: two weights named {key} ({places[key]} and {place})")
        tensors[key] = torch.from_numpy(np.array(dataset[()], dtype=np.float32))
        places[key] = place

    with _open_h5(path) as f:
        keras3 = next((g for g in ("layers", "_layer_checkpoint_dependencies") if g in f), None)
        if keras3:
            with_weights = {layer: group["vars"] for layer, group in f[keras3].items()
                            if isinstance(group, h5py.Group) and len(group.get("vars", ())) > 0}
            # layers without weights (input, ReLU, padding, add) keep an empty group and are skipped
            names = _application_names(list(with_weights), path)
            for layer, variables in with_weights.items():
                indices = sorted(variables, key=int)
                roles = KERAS3_ROLES.get(len(indices), tuple(f"var{i}" for i in indices))
                shown = f" ({names[layer]})" if names[layer] != layer else ""
                for index, role in zip(indices, roles):
                    put(f"{names[layer]}/{role}", f"{keras3}/{layer}/vars/{index}{shown}", variables[index])
        else:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in root.attrs:
                raise ValueError(f"{path} is not a Keras weights file: no 'layer_names' attribute and no 'layers' group")
            prefix = "model_weights/" if root is not f else ""
            for layer in map(_text, root.attrs["layer_names"]):
                group = root[layer]
                for weight in map(_text, group.attrs.get("weight_names", [])):
                    role = weight.rsplit("/", 1)[-1].split(":")[0]
                    role = "kernel" if role == "depthwise_kernel" else role
                    put(f"{layer}/{role}", f"{prefix}{layer}/{weight}", group[weight])
    if not tensors:
        raise ValueError(f"{path} holds no weights")
    return tensors, places


def _kind_and_order(name: str) -> tuple[str, int]:
    """Keras 3's generic layer name split into its class and creation index:
    `batch_normalization_10` -> ('batch_normalization', 10), `conv2d` -> ('conv2d', 0)."""
    match = GENERIC_NAME.fullmatch(name)
    return (match.group(1), int(match.group(2) or 0)) if match else (name, 0)


def _application_sequence(arch: str) -> dict[str, list[str]]:
    """The applications' layer names with weights, per Keras class, in creation order: what a
    Keras 3 weights file numbers conv2d, conv2d_1, ... (read off our units, from the same tables;
    V3's squeeze-and-excitation layers come between its block's depthwise and projection)."""
    layers = LAYER_NAMES[arch]
    sequence: dict[str, list[str]] = {"conv2d": [], "depthwise_conv2d": [], "batch_normalization": [], "dense": []}
    excited = _se_blocks(arch) if arch in V3_TAILS else []
    for unit in model_units(arch):
        conv, bn = layers(unit)
        if unit.part == "project" and unit.block in excited:
            sequence["conv2d"] += [f"{_v3_prefix(unit.block)}squeeze_excite_conv",
                                   f"{_v3_prefix(unit.block)}squeeze_excite_conv_1"]
        sequence["depthwise_conv2d" if unit.part == "depthwise" else "conv2d"].append(conv)
        sequence["batch_normalization"].append(bn)
    if arch == "mobilenet_v1":
        sequence["conv2d"].append("conv_preds")  # a 1x1 Conv2D with bias, after the features
    elif arch in V3_TAILS:
        sequence["conv2d"] += list(V3_TAILS[arch])  # the 1x1 convolution after the pooling, the classifier
    else:
        sequence["dense"].append("predictions")
    return sequence


def _application_names(layers: list[str], path: Path) -> dict[str, str]:
    """The applications' name of each layer of a Keras 3 weights file.

    Keras 3 stores a functional model's layers as `layers/<class name>_<n>` numbered per class in
    creation order (HDF5 lists them alphabetically, so `_10` before `_2`: the order comes from the
    numbers), not under the applications' names. The architecture is MobileNetV2 when a Dense
    classifier is present, else MobileNet; each class's layers are then matched in order with the
    applications' sequence, and a file whose sequence does not fit is refused, naming the first
    mismatch.
    """
    by_kind: dict[str, list[tuple[int, str]]] = {}
    for layer in layers:
        kind, order = _kind_and_order(layer)
        by_kind.setdefault(kind, []).append((order, layer))
    # MobileNetV2 has a Dense classifier; the others are told apart by their depthwise layers
    depthwise = len(by_kind.get("depthwise_conv2d", ()))
    arch = "mobilenet_v2" if "dense" in by_kind else {15: "mobilenet_v3_large", 11: "mobilenet_v3_small"}.get(
        depthwise, "mobilenet_v1")
    variant = KERAS_NAMES[arch]
    unknown = sorted(set(by_kind) - {"conv2d", "depthwise_conv2d", "batch_normalization", "dense"})
    if unknown:
        raise ValueError(f"{path}: layer {by_kind[unknown[0]][0][1]} has weights, but no layer of that kind is in "
                         f"{variant} (not a Keras applications MobileNet / MobileNetV2 file)")
    names = {}
    for kind, expected in _application_sequence(arch).items():
        found = [layer for _, layer in sorted(by_kind.get(kind, []))]
        for i, (layer, application) in enumerate(zip(found, expected)):
            if _kind_and_order(layer)[1] != i:
                raise ValueError(f"{path}: {kind} layers are not numbered 0, 1, 2, ...: {layer} is the {i + 1}th "
                                 f"(where {variant} has {application})")
            names[layer] = application
        if len(found) < len(expected):
            raise ValueError(f"{path}: its layers do not fit {variant}: {kind} layer {len(found) + 1} of "
                             f"{len(expected)} ({expected[len(found)]}) is missing")
        if len(found) > len(expected):
            raise ValueError(f"{path}: its layers do not fit {variant}: {found[len(expected)]} is one {kind} more "
                             f"than its {len(expected)}")
    return names


def _hwio_to_oihw(kernel: torch.Tensor) -> torch.Tensor:
    return kernel.permute(3, 2, 0, 1)


def _depthwise_to_torch(kernel: torch.Tensor) -> torch.Tensor:
    """(kh, kw, channels, 1) -> (channels, 1, kh, kw): one filter per channel (groups = channels)."""
    return kernel.permute(2, 3, 0, 1)


def _conv1x1_to_linear(kernel: torch.Tensor) -> torch.Tensor:
    """V1's classifier, a (1, 1, in, classes) convolution, as an nn.Linear weight (classes, in)."""
    return kernel.reshape(kernel.shape[-2], kernel.shape[-1]).t() if kernel.dim() == 4 else kernel


def _dense_to_linear(kernel: torch.Tensor) -> torch.Tensor:
    """A Dense kernel (in, classes) as an nn.Linear weight (classes, in)."""
    return kernel.t()


def _v1_layers(unit: Unit) -> tuple[str, str]:
    if unit.part == "stem":
        return "conv1", "conv1_bn"
    kind = "dw" if unit.part == "depthwise" else "pw"
    return f"conv_{kind}_{unit.block}", f"conv_{kind}_{unit.block}_bn"


def _v2_layers(unit: Unit) -> tuple[str, str]:
    if unit.part == "stem":
        return "Conv1", "bn_Conv1"
    if unit.part == "head":
        return "Conv_1", "Conv_1_bn"
    prefix = "expanded_conv_" if unit.block == 1 else f"block_{unit.block - 1}_"  # Keras counts blocks from 0
    return f"{prefix}{unit.part}", f"{prefix}{unit.part}_BN"


def _v3_prefix(block: int) -> str:
    return "expanded_conv_" if block == 1 else f"expanded_conv_{block - 1}_"  # Keras counts blocks from 0


def _v3_layers(unit: Unit) -> tuple[str, str]:
    if unit.part == "stem":
        return "conv", "conv_bn"
    if unit.part == "head":
        return "conv_1", "conv_1_bn"
    return f"{_v3_prefix(unit.block)}{unit.part}", f"{_v3_prefix(unit.block)}{unit.part}_bn"


def _se_blocks(arch: str) -> list[int]:
    """The blocks (indices in `features`) with squeeze-and-excitation: the rows of the V3 table with SE."""
    return [i + 1 for i, row in enumerate(v3.VARIANTS[arch][0]) if row.se]


LAYER_NAMES = {"mobilenet_v1": _v1_layers, "mobilenet_v2": _v2_layers, "mobilenet_v3_large": _v3_layers,
               "mobilenet_v3_small": _v3_layers}
KERAS_NAMES = {"mobilenet_v1": "Keras MobileNet", "mobilenet_v2": "Keras MobileNetV2",
               "mobilenet_v3_large": "Keras MobileNetV3Large", "mobilenet_v3_small": "Keras MobileNetV3Small"}
V3_TAILS = {"mobilenet_v3_large": ("conv_2", "logits"), "mobilenet_v3_small": ("conv_2", "logits")}


def _pairs(arch: str, classifier: str) -> list[Pair]:
    layers = LAYER_NAMES[arch]
    pairs = []
    for unit in model_units(arch):
        conv, bn = layers(unit)
        transform = _depthwise_to_torch if unit.part == "depthwise" else _hwio_to_oihw
        pairs.append(Pair(f"{unit.prefix}.conv.weight", f"{conv}/kernel", transform))
        pairs += [Pair(f"{unit.prefix}.bn.{ours}", f"{bn}/{theirs}") for ours, theirs in zip(BN_PARAMS, BN_ROLES)]
        pairs.append(Pair(f"{unit.prefix}.bn.num_batches_tracked", None))  # no such counter in Keras
    if arch in V3_TAILS:
        for block in _se_blocks(arch):  # squeeze-and-excitation: two 1x1 convolutions with biases
            for ours, theirs in (("reduce", "squeeze_excite_conv"), ("expand", "squeeze_excite_conv_1")):
                pairs += [Pair(f"features.{block}.se.{ours}.weight", f"{_v3_prefix(block)}{theirs}/kernel", _hwio_to_oihw),
                          Pair(f"features.{block}.se.{ours}.bias", f"{_v3_prefix(block)}{theirs}/bias")]
        head = V3_TAILS[arch][0]  # the 1x1 convolution after the pooling: our linear layer
        pairs += [Pair("head.0.weight", f"{head}/kernel", _hwio_to_oihw), Pair("head.0.bias", f"{head}/bias")]
    to_linear = _dense_to_linear if arch == "mobilenet_v2" else _conv1x1_to_linear
    pairs += [Pair("classifier.weight", f"{classifier}/kernel", to_linear), Pair("classifier.bias", f"{classifier}/bias")]
    return pairs


def plan_keras(tensors: dict[str, torch.Tensor]) -> Plan:
    """Keras applications' MobileNet (V1) or MobileNetV2 with its classifier (include_top=True)."""
    layers = {key.split("/")[0] for key in tensors}
    options = dict(activation="relu6", bn_eps=1e-3, padding="tf_same")
    if {"conv1", "conv_dw_1"} <= layers:
        arch, classifier, last, base = "mobilenet_v1", "conv_preds", "conv_pw_13/kernel", v1.BLOCKS[-1].out_channels
        options["dropout"] = 1e-3  # Keras MobileNet's default Dropout before conv_preds
        if "conv_dw_1/kernel" in tensors and tensors["conv_dw_1/kernel"].shape[-1] != 1:
            raise ValueError("unsupported Keras MobileNet with depth_multiplier != 1 (ours has one filter per channel)")
    elif {"conv", "conv_bn", "expanded_conv_depthwise"} <= layers:
        arch = "mobilenet_v3_large" if "expanded_conv_14_depthwise" in layers else "mobilenet_v3_small"
        classifier, last, base = "logits", "conv_1/kernel", v3.VARIANTS[arch][1]
        options = dict(activation="hardswish", bn_eps=1e-3, padding="tf_same", dropout=0.2)  # Keras' defaults
    elif {"Conv1", "expanded_conv_depthwise"} <= layers:
        classifier = "Logits" if "Logits" in layers else "predictions"
        arch, last, base = "mobilenet_v2", "block_16_project/kernel", v2.STAGES[-1].out_channels
        options["dropout"] = 0.0  # Keras MobileNetV2 has no dropout
    else:
        raise ValueError(
            "not a Keras applications MobileNet / MobileNetV2 / MobileNetV3 weights file: no conv1 + conv_dw_1, "
            f"Conv1 + expanded_conv_depthwise or conv + expanded_conv_depthwise layers (it has {some(sorted(layers), 4)})"
        )
    if f"{classifier}/kernel" not in tensors:
        expected = {"mobilenet_v1": "conv_preds", "mobilenet_v2": "Logits / predictions"}.get(arch, "logits")
        raise ValueError(f"no classifier layer ({expected}): an include_top=False ('_no_top') file; our models need one")
    if last not in tensors:
        raise ValueError(f"the Keras file lacks {last}")
    width = width_from(tensors[last].shape[-1], base)
    num_classes = int(tensors[f"{classifier}/kernel"].shape[-1])
    variant = f"{KERAS_NAMES[arch]} alpha {width:g}"
    return Plan(arch, width, num_classes, options, _pairs(arch, classifier), variant)


def keras_resolution(filename: str) -> int | None:
    """The input resolution a Keras applications file name states (`..._224_tf.h5`), if any."""
    match = KERAS_RESOLUTION.search(filename)
    return int(match.group(1)) if match else None
