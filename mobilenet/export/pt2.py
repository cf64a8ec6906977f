"""`torch.export` programs: the inference model traced to an ATen graph with a dynamic batch.

The saved program (`torch.export.save`) is loaded back (`torch.export.load`) and checked against the
original model before it replaces the output file. The metadata (class names, normalisation,
resolution, configuration) travels in the archive's `extra_files` as `mobilenet.json`.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from mobilenet.files import atomic_output
from mobilenet.export.fold import inference_model
from mobilenet.export.onnx import FP32_TOLERANCE, CheckResult, metadata

METADATA_FILE = "mobilenet.json"


def export_program(model: nn.Module, resolution: int) -> torch.export.ExportedProgram:
    """The fused model (NCHW) as an ExportedProgram whose batch dimension is dynamic.

    The example batch has 2 images: with 1, torch.export specialises the batch size to 1.
    """
    example = torch.zeros(model.config.input_shape(2, resolution))
    return torch.export.export(inference_model(model, channels_last=False), (example,),
                               dynamic_shapes=({0: torch.export.Dim("batch")},))


def load_pt2(path: str | os.PathLike) -> tuple[torch.export.ExportedProgram, dict]:
    """A saved program and its metadata (JSON values decoded)."""
    extra = {METADATA_FILE: ""}
    program = torch.export.load(str(path), extra_files=extra)
    props = json.loads(extra[METADATA_FILE] or "{}")
    return program, {k: _decode(v) for k, v in props.items()}


def _decode(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value


def export_pt2(model: nn.Module, path: str | os.PathLike, images: torch.Tensor, *, meta=None,
               describe: str = "check inputs") -> CheckResult:
    """Export, save, reload and check a `torch.export` program; `path` is replaced only if the
    reloaded program's logits match the original model's within 1e-4 at batch 1 and len(images)."""
    resolution = int(images.shape[-1])
    with atomic_output(path) as tmp:
        props = metadata(meta, model, resolution)
        torch.export.save(export_program(model, resolution), str(tmp), extra_files={METADATA_FILE: json.dumps(props)})
        module = load_pt2(tmp)[0].module()
        with torch.inference_mode():
            expected = model.eval()(images)
            got = torch.cat([module(images[:1]), module(images)[1:]])
        diff = float((got - expected).abs().max())
        if not diff <= FP32_TOLERANCE:
            raise ValueError(f"exported program disagrees with PyTorch: max |logit difference| {diff:.2e} > "
                             f"{FP32_TOLERANCE:g} on {describe}; nothing written")
    return CheckResult(diff, (1, len(images)), describe)


def write(format: str, model: nn.Module, output: str | os.PathLike, check: torch.Tensor, *, meta=None,
          describe: str = "check inputs", batch: int = 1, int8: bool = False,
          calibration: torch.Tensor | None = None, test_loader=None, min_agreement: float | None = None,
          force: bool = False) -> dict:
    """The pt2 format's writer (`mobilenet.export.formats`; it has no INT8 form)."""
    return {"check": export_pt2(model, output, check, meta=meta, describe=describe).to_dict()}


__all__ = ["export_pt2", "export_program", "load_pt2", "write"]
