"""INT8: post-training static quantization of the ONNX model with ONNX Runtime's quantizer.

The recipe, each choice measured against fp32 ONNX Runtime on V2 1.0-224 (figures and machines:
benchmarks/results/latency.md):
* `quant_pre_process` first (shape inference and graph clean-up, as ONNX Runtime recommends);
* QDQ format (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into integer kernels);
* per-channel int8 weights (depthwise filters differ a lot in scale from channel to channel) and
  uint8 activations: u8 x s8 is what VNNI multiplies natively, and ran well ahead of s8 x s8;
* depthwise convolutions quantized too: leaving them in float (the usual advice for accuracy) put
  a dequantize/quantize pair around each and made the model slower than fp32;
* `reduce_range` (7-bit weights) only where ONNX Runtime's u8 x s8 kernels saturate, measured by
  `integer_kernels_saturate`: on CPUs without VNNI (AVX2), the instruction they use adds pairs of
  u8 x s8 products in 16 bits, which overflow at full range (a demo model measured on an AVX2 EPYC:
  agreement with fp32 95.6% at 8 bits), while at 7 bits the pair sum cannot overflow;
* MinMax calibration on a few hundred training images.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mobilenet.export.guard import guard
from mobilenet.files import atomic_output, temporary_folder
from mobilenet.optional import require
from mobilenet.export.fold import inference_model
from mobilenet.export.onnx import (INPUT, OPSET, CheckResult, add_metadata, check_against, export_onnx, metadata, run,
                                   session, to_onnx)

CALIBRATION_BATCH = 32


@dataclass
class Int8Report:
    """How the INT8 model compares with the fp32 one on a labelled split."""

    agreement: float  # share of images whose top-1 class is the same for both
    fp32_top1: float
    int8_top1: float
    images: int
    fp32_check: CheckResult  # the fp32 ONNX model against PyTorch, before quantization
    int8_max_abs_diff: float  # the INT8 model against PyTorch on the same inputs (informative)
    fp32_bytes: int
    int8_bytes: int

    def to_dict(self) -> dict:
        return {"agreement": self.agreement, "fp32_top1": self.fp32_top1, "int8_top1": self.int8_top1,
                "images": self.images, "fp32_check": self.fp32_check.to_dict(),
                "int8_max_abs_diff": self.int8_max_abs_diff, "fp32_bytes": self.fp32_bytes,
                "int8_bytes": self.int8_bytes}


def _reader(batches: Iterable[torch.Tensor]):
    """An ONNX Runtime CalibrationDataReader over float32 N x C x H x W batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: batch.numpy().astype(np.float32, copy=False)}

    return Reader()


SATURATION_PROBE_CHANNELS = 64  # input channels of the probe's 1x1 convolution: 32 pairs of u8 x s8 products


def _saturation_probe() -> bytes:
    """An INT8 QDQ convolution of `SATURATION_PROBE_CHANNELS` inputs of 255 by weights of 127, all
    scales 1, its output quantized so that the exact sum is representable: ONNX Runtime fuses it
    into one integer convolution, the operation whose accumulation is in question."""
    from onnx import TensorProto, helper, numpy_helper

    channels = SATURATION_PROBE_CHANNELS
    exact = channels * 255 * 127
    constants = {"one": np.array(1.0, np.float32), "u8_zero": np.array(0, np.uint8), "s8_zero": np.array(0, np.int8),
                 "weight": np.full((1, channels, 1, 1), 127, np.int8), "out_scale": np.array(exact / 255, np.float32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "one", "u8_zero"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "one", "u8_zero"], ["xf"]),
             helper.make_node("DequantizeLinear", ["weight", "one", "s8_zero"], ["wf"]),
             helper.make_node("Conv", ["xf", "wf"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "out_scale", "u8_zero"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "out_scale", "u8_zero"], ["out"])]
    graph = helper.make_graph(nodes, "saturation_probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 1, 1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 1, 1])],
                              [numpy_helper.from_array(value, name) for name, value in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]).SerializeToString()


@functools.cache
def integer_kernels_saturate() -> bool:
    """Whether ONNX Runtime's fused u8 x s8 convolution gets a full-range product sum wrong on this
    CPU, measured: the probe (`_saturation_probe`) run as ONNX Runtime optimises it, against the
    same graph run operator by operator in float (its reference). True where the CPU lacks VNNI."""
    import onnxruntime as ort

    x = np.full((1, SATURATION_PROBE_CHANNELS, 1, 1), 255, np.float32)
    outputs = []
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        probe = ort.InferenceSession(_saturation_probe(), options, providers=["CPUExecutionProvider"])
        outputs.append(float(probe.run(None, {"x": x})[0].ravel()[0]))
    fused, reference = outputs
    return abs(fused - reference) > 0.01 * abs(reference)


def quantize(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, calibration: torch.Tensor,
             *, quantize_depthwise: bool = True) -> bool:
    """Quantize the fp32 ONNX file to INT8 (the recipe in this module's docstring), calibrated on the
    normalised images `calibration` (N x C x H x W); not atomic, no check. Returns whether the
    weights took 7 bits (`integer_kernels_saturate`)."""
    require("onnx", "onnxruntime", purpose="INT8 quantization")
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    reduce_range = integer_kernels_saturate()
    with temporary_folder("int8") as work:
        prepared = work / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        exclude = None
        if not quantize_depthwise:
            exclude = [node.name for node in onnx.load(str(prepared)).graph.node
                       if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)]
        batches = calibration.split(CALIBRATION_BATCH)
        quantize_static(str(prepared), str(int8_path), _reader(batches), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, reduce_range=reduce_range)
    return reduce_range


def describe_quantization(calibration_images: int, reduce_range: bool = False) -> str:
    """What an INT8 file's metadata says of how it was made (`quantize`'s recipe)."""
    weights = ("per-channel int8 weights in 7 bits (this CPU's integer kernels saturate at 8)" if reduce_range
               else "per-channel int8 weights")
    return f"int8 QDQ: {weights}, uint8 activations, MinMax calibration on {calibration_images} images"


def compare(fp32_session, int8_session, loader) -> tuple[float, float, float, int]:
    """Top-1 agreement of the two sessions, and the top-1 accuracy of each, over a labelled loader."""
    same = right32 = right8 = total = 0
    with tqdm(total=len(loader.dataset), unit="img", desc="int8 against fp32", disable=None, leave=False,
              dynamic_ncols=True) as bar:  # disable=None: shown only on a terminal
        for images, labels in loader:
            top32 = run(fp32_session, images).argmax(1)
            top8 = run(int8_session, images).argmax(1)
            truth = labels.numpy()
            same += int((top32 == top8).sum())
            right32 += int((top32 == truth).sum())
            right8 += int((top8 == truth).sum())
            total += len(truth)
            bar.update(len(truth))
    if total == 0:
        raise ValueError("the evaluation split is empty")
    return same / total, right32 / total, right8 / total, total


def export_int8(model: nn.Module, path: str | os.PathLike, calibration: torch.Tensor, test_loader,
                check_images: torch.Tensor, *, meta=None, describe: str = "check inputs",
                min_agreement: float | None = None, force: bool = False) -> Int8Report:
    """Export `model` to ONNX, check it against PyTorch, quantize it with `calibration` images and
    write the INT8 model to `path` atomically, with the same metadata; report how it compares with
    fp32 on `test_loader`. Raises ValueError (and writes nothing) if the fp32 check fails or the
    top-1 agreement misses the guard (`mobilenet.export.guard`; `force`: written with a warning)."""
    require("onnx", "onnxruntime", purpose="INT8 export")
    resolution = int(check_images.shape[-1])
    with atomic_output(path) as tmp, temporary_folder("int8") as work:
        fp32_path = work / "fp32.onnx"
        to_onnx(inference_model(model, channels_last=False), fp32_path, resolution)
        fp32_session = session(fp32_path)
        fp32_check = check_against(fp32_session, model, check_images, describe)
        reduced = quantize(fp32_path, tmp, calibration)
        props = metadata(meta, model, resolution)
        props["quantization"] = describe_quantization(len(calibration), reduced)
        add_metadata(tmp, props)
        int8_session = session(tmp)
        int8_check = check_against(int8_session, model, check_images, describe, tolerance=None)
        agreement, fp32_top1, int8_top1, images = compare(fp32_session, int8_session, test_loader)
        guard(agreement, images, f"INT8 {Path(path).name}", min_agreement=min_agreement, force=force)
        report = Int8Report(agreement, fp32_top1, int8_top1, images, fp32_check, int8_check.max_abs_diff,
                            fp32_path.stat().st_size, tmp.stat().st_size)
    return report


def write_onnx(format: str, model: nn.Module, output: str | os.PathLike, check: torch.Tensor, *, meta=None,
               describe: str = "check inputs", batch: int = 1, int8: bool = False,
               calibration: torch.Tensor | None = None, test_loader=None, min_agreement: float | None = None,
               force: bool = False) -> dict:
    """The onnx format's writer (`mobilenet.export.formats`): fp32 (`export_onnx`) or, `int8`, quantized
    (`export_int8`)."""
    if not int8:
        return {"check": export_onnx(model, output, check, meta=meta, describe=describe).to_dict()}
    return export_int8(model, output, calibration, test_loader, check, meta=meta, describe=describe,
                       min_agreement=min_agreement, force=force).to_dict()


__all__ = ["Int8Report", "compare", "describe_quantization", "export_int8", "integer_kernels_saturate", "quantize",
           "write_onnx"]
