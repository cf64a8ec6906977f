"""Import published MobileNet weights (torchvision, timm, Keras) as our checkpoints.

`convert(source, source_format, output)` reads a weights file without running any code from it,
recognises the architecture, width and number of classes from its tensors, builds our model with
the options that reproduce the source's function exactly (activation, BatchNorm epsilon, padding),
maps every tensor by an explicit name map (refusing any tensor left over, missing or misshapen)
and writes our checkpoint with the source's preprocessing in its metadata. `download(...)` fetches
the published files, verified. The source libraries themselves are never imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mobilenet.checkpoint import ModelMeta, refuse_replacing_ours, save_checkpoint
from mobilenet.convert.catalog import FORMATS, HALF, IMAGENET_MEAN, IMAGENET_STD, SLIM_CROP, WEIGHTS, Weights, \
    find_by_filename, find_weights, known_weights
from mobilenet.convert.classes import imagenet_classes
from mobilenet.convert.download import download, file_sha256
from mobilenet.convert.keras_h5 import keras_resolution, plan_keras, read_keras_h5
from mobilenet.models.v4 import VARIANTS as V4_VARIANTS
from mobilenet.convert.layout import Pair, Plan, assemble
from mobilenet.convert.torch_sources import plan_timm, plan_torchvision, read_torch_file
from mobilenet.files import refuse_overwrite
from mobilenet.models import create_model


@dataclass
class Imported:
    """A source file rebuilt as our model: the model (evaluation mode), what the checkpoint will
    say about it, and the name map used (one `Pair` per tensor of ours)."""

    model: nn.Module
    meta: ModelMeta
    pairs: list[Pair]
    source_tensors: dict[str, torch.Tensor]


def read_source(source: str | os.PathLike, source_format: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a source file in the source's own names and layouts, and, for messages,
    where each lives in the file."""
    if source_format not in FORMATS:
        raise ValueError(f"source format must be one of {', '.join(FORMATS)}, got {source_format!r}")
    if source_format == "keras":
        return read_keras_h5(source)
    tensors = read_torch_file(source)
    return tensors, {name: name for name in tensors}


def _preprocessing(source_format: str, plan: Plan, filename: str) -> tuple[Weights | None, dict]:
    """The published entry this file is (by its file name; for timm, whose every plain width has
    one published tag, by architecture), and the preprocessing its weights expect."""
    entry = find_by_filename(source_format, filename)
    if entry is None and source_format == "timm":
        entry = next((w for w in WEIGHTS if w.format == "timm" and (w.arch, w.width) == (plan.arch, plan.width)), None)
    if entry is not None and (entry.arch, entry.width) == (plan.arch, plan.width):
        return entry, dict(resolution=entry.resolution, mean=entry.mean, std=entry.std,
                           crop_fraction=entry.crop_fraction, interpolation=entry.interpolation)
    if source_format == "keras":
        return None, dict(resolution=keras_resolution(filename) or 224, mean=HALF, std=HALF,
                          crop_fraction=SLIM_CROP, interpolation="bilinear")
    if source_format == "timm":  # timm's V1 weights all use mean = std = 0.5, the others ImageNet's
        mean, std = (HALF, HALF) if plan.arch == "mobilenet_v1" else (IMAGENET_MEAN, IMAGENET_STD)
        side = V4_VARIANTS[plan.arch][2] if plan.arch in V4_VARIANTS else 224  # V4 M and L: 256 and 384
        return None, dict(resolution=side, mean=mean, std=std, crop_fraction=SLIM_CROP, interpolation="bicubic")
    return None, dict(resolution=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_fraction=SLIM_CROP,
                      interpolation="bilinear")


def import_weights(source: str | os.PathLike, source_format: str) -> Imported:
    """Rebuild the weights file `source` as our model, checked, without writing anything."""
    source = Path(source)
    tensors, places = read_source(source, source_format)
    planner = {"torchvision": plan_torchvision, "timm": plan_timm, "keras": plan_keras}[source_format]
    plan = planner(tensors)
    model = create_model(plan.arch, width_mult=plan.width, num_classes=plan.num_classes, **plan.options)

    def where(name: str) -> str:  # a source tensor as its file names it, for messages
        return repr(places.get(name, name))

    state = assemble(plan, tensors, model.state_dict(), where)
    model.load_state_dict(state, strict=True)
    model.eval()

    entry, prep = _preprocessing(source_format, plan, source.name)
    classes = imagenet_classes() if plan.num_classes == 1000 else [f"class_{i}" for i in range(plan.num_classes)]
    extra = {
        "source": source.name,
        "source_format": source_format,
        "source_variant": plan.variant,
        "source_sha256": file_sha256(source),
        "crop_fraction": prep["crop_fraction"],
        "interpolation": prep["interpolation"],
    }
    if entry is not None:
        extra["weights"] = f"{entry.format}/{entry.name}"
    meta = ModelMeta(config=model.config, classes=classes, resolution=prep["resolution"],
                     mean=tuple(prep["mean"]), std=tuple(prep["std"]), extra=extra)
    return Imported(model, meta, plan.pairs, tensors)


def convert(source: str | os.PathLike, source_format: str, output: str | os.PathLike) -> ModelMeta:
    """Convert a torchvision / timm / Keras weights file into our checkpoint at `output`.

    Supported: torchvision MobileNetV2 and MobileNetV3 Large/Small at width 1.0 (`.pth`); timm
    mobilenetv1_100 / _125, mobilenetv2_050 / _100 / _140 and other plain widths, mobilenetv3_large/small
    and mobilenetv4_conv_small/medium/large (`.safetensors` or `.pth`); Keras applications MobileNet
    (alpha 0.25-1.0), MobileNetV2 (alpha 0.35-1.4) and MobileNetV3Large/Small with their classifier
    (`.h5`: Keras 2 weights or full-model files, Keras 3 `.weights.h5` and `.keras`). Anything else
    (timm's depth-multiplied 110d/120d or head-conv 100h, torchvision's V3 at other widths, headless
    files) is refused with a ValueError saying why, as is a file that pickles code, or any tensor left
    unmapped, missing or of the wrong shape.

    The checkpoint records the faithful options in its configuration (torchvision and timm: ReLU6,
    BatchNorm eps 1e-5, symmetric padding; torchvision's V3: hard-swish, eps 1e-3; Keras: ReLU6,
    eps 1e-3, TensorFlow 'SAME' padding),
    and in its metadata the source's preprocessing: resolution, mean and std, and in `extra` the
    centre-crop fraction, interpolation, source file, its sha256 and the published weights' name.
    Returns that metadata.
    """
    refuse_overwrite(output, {"weights file": source})
    refuse_replacing_ours(output, keep=("training state",))
    imported = import_weights(source, source_format)
    save_checkpoint(output, imported.model, imported.meta)
    return imported.meta


__all__ = [
    "FORMATS", "Imported", "WEIGHTS", "Weights", "convert", "download", "find_weights", "imagenet_classes",
    "import_weights", "known_weights", "read_source",
]
