"""The phone exports: ExecuTorch (`pte.py`), LiteRT (`litert.py`) and Core ML (`coreml.py`), what each
needs, and the dispatch to them; what they share is `phone_common.py`.

Phone runtimes plan their memory for one input shape, so each file is traced by torch.export at
a fixed batch size (`batch`, 1 by default, as a camera app feeds it) and says so in its metadata;
ExecuTorch refuses any other batch, LiteRT would have to resize its tensors. Our Python sessions
(`PhoneSession`) take exactly that batch when called, and feed longer runs of images in chunks of
it through ONNX Runtime's `run(outputs, feeds)` interface, so that the checks against PyTorch
(`check_against`) and the INT8 comparison (`compare`) serve these formats unchanged.

The checks, where the format's runtime runs here (ExecuTorch's and LiteRT's Python runtimes; Core
ML runs only on Apple's systems and is validated structurally):
* fp32: logits within `FP32_TOLERANCE` (1e-4) of PyTorch on the check images;
* INT8: top-1 agreement with the fp32 file on the checkpoint's own test images, reported, and
  judged by the one guard of every reduced-precision artefact (`mobilenet.export.guard`).

INT8 is PyTorch's PT2E flow (`quantize_pt2e`) with each runtime's own quantizer: per-channel int8
weights, int8 activations, calibrated on training images.

What an app needs to feed the model (`phone_metadata`: class names, input size, batch size,
layout, channel order, normalisation, and for a file with int8 input or output tensors their scale
and zero point) travels inside the file (LiteRT: the model's metadata; Core ML: the package's
user-defined metadata) or, for ExecuTorch, in a JSON side file beside it, `NAME.pte.json`.
`read_phone_metadata(path)` reads any of them back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from mobilenet.export import coreml, litert, pte
from mobilenet.export.formats import FORMATS, PHONE_FORMATS, SUFFIXES
from mobilenet.export.phone_common import side_file


def read_phone_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a phone export (.pte, .tflite or .mlpackage), as JSON values."""
    suffix = Path(path).suffix
    if suffix == SUFFIXES["executorch"]:
        return json.loads(side_file(path).read_text())
    if suffix == SUFFIXES["tflite"]:
        return litert.read_metadata(path)
    if suffix == SUFFIXES["coreml"]:
        return coreml.read_metadata(path)
    raise ValueError(f"{path} is not a phone export: expected one of {', '.join(SUFFIXES[f] for f in PHONE_FORMATS)}")


def phone_outputs(format: str, output: str | os.PathLike) -> list[Path]:
    """The paths an export to `format` writes (ExecuTorch: the program and its side file), after
    checking that `output` has the format's suffix."""
    path = Path(output)
    if path.suffix.lower() != SUFFIXES[format]:
        raise ValueError(f"a {format} export is a {SUFFIXES[format]} file: give --output NAME{SUFFIXES[format]}, "
                         f"not {output}")
    return [path, side_file(path)] if format == "executorch" else [path]


def export_phone(format: str, model: nn.Module, output: str | os.PathLike, images: torch.Tensor, *, meta=None,
                 describe: str = "check inputs", batch: int = 1, int8: bool = False,
                 calibration: torch.Tensor | None = None, test_loader=None, min_agreement: float | None = None,
                 force: bool = False) -> dict:
    """The phone formats' writer (`mobilenet.export.formats`): `model` to `output` in `format`, checked as
    this module's docstring says; `int8`: quantized (ExecuTorch and LiteRT calibrate on `calibration`
    images and compare with fp32 on `test_loader`; Core ML's int8 weights need neither). Returns a
    JSON-ready report: `check` (fp32) or the Int8Report's fields, what checked it, and the batch."""
    if format == "coreml":
        return {**coreml.export_coreml(model, output, images, meta=meta, batch=batch, int8=int8), "batch": batch}
    export = pte.export_executorch if format == "executorch" else litert.export_tflite
    result = export(model, output, images, meta=meta, describe=describe, batch=batch, calibration=calibration,
                    test_loader=test_loader, min_agreement=min_agreement, force=force)
    return {"checked_by": FORMATS[format].checked_by, **(result.to_dict() if int8 else {"check": result.to_dict()}),
            "batch": batch}


__all__ = ["export_phone", "phone_outputs", "read_phone_metadata"]
