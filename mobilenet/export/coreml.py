"""Core ML: the inference model as an ML Program package (`.mlpackage`) for iPhones, converted by
coremltools, fp16 by default (what Apple recommends for the Neural Engine and GPU); `int8=True`
adds int8 weights (linear symmetric, per channel: `linear_quantize_weights`), computing in fp16.

Core ML runs only on Apple's systems, so nothing here can run the package: it is validated
structurally instead, from the package as saved (`validate`): one float input `input` of the fixed
shape, one output `logits` of batch x classes, an ML Program whose weights take the bytes their
precision implies, and the metadata read back. The report says so (`validated`).

The metadata (`phone.phone_metadata`) is the package's user-defined metadata, every value JSON;
the input's description repeats the preprocessing and the classes are the output's description.

coremltools is optional and large (`pip install 'mobilenet[coreml]'`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from mobilenet.export.fold import inference_model
from mobilenet.export.onnx import INPUT, OUTPUT
from mobilenet.export.phone_common import check_batch, decode, phone_metadata, quiet
from mobilenet.files import atomic_folder
from mobilenet.optional import require

PRECISIONS = {False: "fp16", True: "int8 weights, fp16 compute"}
WEIGHT_BYTES = {False: 2, True: 1}  # bytes per weight in the package's weight file
COREMLTOOLS_KEYS = "com.github.apple."  # the converter's own entries in the user-defined metadata (its version)


def convert(model: nn.Module, batch: int, resolution: int, int8: bool = False):
    """The coremltools MLModel of `model` (fused here) at a fixed input of `batch` x C x `resolution`^2."""
    require("coremltools", purpose="Core ML export")
    fused = inference_model(model, channels_last=False)
    example = torch.zeros(model.config.input_shape(batch, resolution))
    with torch.no_grad(), quiet():  # among what it prints: "Torch version ... has not been tested with coremltools"
        import coremltools as ct

        traced = torch.jit.trace(fused, example)
        mlmodel = ct.convert(traced, inputs=[ct.TensorType(name=INPUT, shape=tuple(example.shape))],
                             outputs=[ct.TensorType(name=OUTPUT)], convert_to="mlprogram",
                             compute_precision=ct.precision.FLOAT16, minimum_deployment_target=ct.target.iOS16)
        if int8:
            from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

            config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                                              granularity="per_channel"))
            mlmodel = linear_quantize_weights(mlmodel, config=config)
    return mlmodel


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata a `.mlpackage` export carries, as JSON values."""
    require("coremltools", purpose="reading a Core ML package")
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    ours = {key: value for key, value in spec.description.metadata.userDefined.items()
            if not key.startswith(COREMLTOOLS_KEYS)}
    return decode(ours)


def validate(path: Path, batch: int, channels: int, resolution: int, classes: int, parameters: int,
             int8: bool, props: dict) -> None:
    """ValueError unless the saved package has the structure `convert` means it to have."""
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    problems = []
    if spec.WhichOneof("Type") != "mlProgram":
        problems.append(f"not an ML Program ({spec.WhichOneof('Type')})")
    inputs, outputs = spec.description.input, spec.description.output
    shape = [batch, channels, resolution, resolution]
    if [i.name for i in inputs] != [INPUT] or list(inputs[0].type.multiArrayType.shape) != shape:
        problems.append(f"inputs {[(i.name, list(i.type.multiArrayType.shape)) for i in inputs]}, not {INPUT} {shape}")
    if [o.name for o in outputs] != [OUTPUT]:
        problems.append(f"outputs {[o.name for o in outputs]}, not {OUTPUT}")
    weights = sum(f.stat().st_size for f in path.rglob("weight.bin"))
    expected = parameters * WEIGHT_BYTES[int8]
    if not 0.9 * expected <= weights <= 1.25 * expected + 65536:  # headers, alignment, biases kept in fp16
        problems.append(f"weights take {weights} bytes, not about {expected} ({PRECISIONS[int8]})")
    if read_metadata(path) != json.loads(json.dumps(props)):
        problems.append("metadata did not read back")
    if problems:
        raise ValueError(f"the Core ML package failed its structural check: {'; '.join(problems)}; nothing written")


def export_coreml(model: nn.Module, path: str | os.PathLike, images: torch.Tensor, *, meta=None, batch: int = 1,
                  int8: bool = False) -> dict:
    """Write `model` as a Core ML package at `path` (.mlpackage, a folder), replacing an old one only
    once the new one has passed `validate`; returns a JSON-ready report."""
    check_batch(batch)
    path = Path(path)
    resolution, channels = int(images.shape[-1]), model.config.in_chans
    props = phone_metadata(meta, model, resolution, batch)
    props["precision"] = PRECISIONS[int8]
    parameters = sum(p.numel() for p in inference_model(model, channels_last=False).parameters())
    with atomic_folder(path) as tmp:
        mlmodel = convert(model, batch, resolution, int8)
        config = model.config
        mlmodel.short_description = f"{config.name} width {config.width_mult:g}, {len(props['classes'])} classes"
        mlmodel.input_description[INPUT] = props["preprocessing"]
        mlmodel.output_description[OUTPUT] = "logits, one per class: " + ", ".join(map(str, props["classes"]))
        for key, value in props.items():
            mlmodel.user_defined_metadata[key] = json.dumps(value)
        mlmodel.save(str(tmp))
        validate(tmp, batch, channels, resolution, len(props["classes"]), parameters, int8, props)
    return {"precision": PRECISIONS[int8], "parameters": parameters,
            "validated": f"Core ML cannot run on this system: {path.name} was validated structurally only (inputs, "
                         "outputs, ML Program, weight bytes, metadata), not run"}


__all__ = ["PRECISIONS", "convert", "export_coreml", "read_metadata", "validate"]
