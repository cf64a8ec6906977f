"""LiteRT (formerly TensorFlow Lite): the inference model as a `.tflite` file, converted by
Google's litert-torch and checked by ai-edge-litert's interpreter (XNNPACK on the CPU, as on a
phone), fp32 or INT8. No TensorFlow is needed.

INT8 is litert-torch's PT2E quantizer (per-channel int8 weights, int8 activations), and the file
it writes takes and returns int8 tensors: an app quantizes its normalised float input with the
input tensor's scale and zero point, q = round(x / scale) + zero_point, and dequantizes the logits,
x = (q - zero_point) * scale. `LiteRTSession` does both, and the metadata repeats the four numbers
(`input_scale`, `input_zero_point`, `output_scale`, `output_zero_point`).

The metadata (`phone.phone_metadata`) is a JSON entry named "mobilenet" in the model's own
metadata list (the flatbuffer's `Model.metadata`, where LiteRT keeps named byte buffers), read back
by `read_metadata`.

litert-torch and ai-edge-litert are optional and large (`pip install 'mobilenet[tflite]'`).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenet.export.fold import inference_model
from mobilenet.export.int8 import Int8Report, compare
from mobilenet.export.onnx import CheckResult, check_against
from mobilenet.export.guard import guard
from mobilenet.export.phone_common import PhoneSession, check_batch, phone_metadata, quantize_pt2e, quiet
from mobilenet.files import atomic_output, temporary_folder
from mobilenet.optional import require

METADATA = "mobilenet"  # the name of our entry in the model's metadata list
QUANTIZATION = "int8 PT2E with litert-torch's PT2EQuantizer: per-channel symmetric int8 weights, int8 activations"


def convert(model: nn.Module, batch: int, resolution: int, calibration: torch.Tensor | None = None) -> bytes:
    """The `.tflite` bytes of `model` (the model as trained; fused here) at a fixed input of `batch`
    x C x `resolution`^2 (NCHW, as PyTorch has it); INT8 when `calibration` (normalised images) is given."""
    require("litert_torch", purpose="LiteRT export")
    with quiet():
        import litert_torch
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        litert_torch.config.show_progress = False  # its progress lines go to stdout
        fused = inference_model(model, channels_last=False)
        example = torch.zeros(model.config.input_shape(batch, resolution))
        options = {}
        if calibration is not None:
            quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            fused = quantize_pt2e(fused, example, quantizer, calibration, prepare_pt2e,
                                  lambda graph: convert_pt2e(graph, fold_quantize=False))
            options["quant_config"] = QuantConfig(pt2e_quantizer=quantizer)
        with torch.no_grad():
            return litert_torch.convert(fused, (example,), **options).model_content()


def with_metadata(content: bytes, props: dict) -> bytes:
    """The model `content` with `props` (JSON) as its metadata entry "mobilenet" (replacing one)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    model.metadata = [entry for entry in (model.metadata or []) if entry.name != METADATA.encode()]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(props).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA, len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(content) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata a `.tflite` export carries (`phone.phone_metadata`, plus int8 scales)."""
    require("ai_edge_litert", purpose="reading a LiteRT file")
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(bytearray(Path(path).read_bytes()), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == METADATA.encode():
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    raise ValueError(f"{path} has no mobilenet metadata (not written by `mobilenet export`)")


class LiteRTSession(PhoneSession):
    """A `.tflite` file in ai-edge-litert's interpreter with `threads` threads (default torch's).
    Takes and returns float32: an int8 file's input is quantized and its output dequantized with
    the tensors' own scale and zero point."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        require("ai_edge_litert", purpose="running a LiteRT model")
        with quiet():
            from ai_edge_litert.interpreter import Interpreter

            self.interpreter = Interpreter(model_path=str(path), num_threads=threads or torch.get_num_threads())
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        super().__init__(path, int(self.input["shape"][0]))

    def forward(self, images: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if dtype != np.float32:
            scale, zero = self.input["quantization"]
            info = np.iinfo(dtype)
            images = np.clip(np.round(images / scale) + zero, info.min, info.max).astype(dtype)
        self.interpreter.set_tensor(self.input["index"], images)
        self.interpreter.invoke()
        logits = self.interpreter.get_tensor(self.output["index"])
        if logits.dtype != np.float32:
            scale, zero = self.output["quantization"]
            logits = (logits.astype(np.float32) - zero) * scale
        return logits

    def quantization(self) -> dict:
        """The int8 input and output tensors' scale and zero point (empty for a float file)."""
        numbers = {}
        for name, details in (("input", self.input), ("output", self.output)):
            if details["dtype"] != np.float32:
                scale, zero = details["quantization"]
                numbers.update({f"{name}_dtype": np.dtype(details["dtype"]).name, f"{name}_scale": float(scale),
                                f"{name}_zero_point": int(zero)})
        return numbers


def export_tflite(model: nn.Module, path: str | os.PathLike, images: torch.Tensor, *, meta=None,
                  describe: str = "check inputs", batch: int = 1, calibration: torch.Tensor | None = None,
                  test_loader=None, min_agreement: float | None = None,
                  force: bool = False) -> CheckResult | Int8Report:
    """Write `model` as a LiteRT model at `path` (.tflite) with its metadata inside, atomically and
    only if its checks pass: fp32 logits within 1e-4 of PyTorch on `images`; with `calibration`
    (normalised training images) INT8, whose top-1 agreement with fp32 on `test_loader` is
    reported (Int8Report) and must pass the guard (`mobilenet.export.guard`)."""
    check_batch(batch)
    resolution = int(images.shape[-1])
    props = phone_metadata(meta, model, resolution, batch)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_output(path))
        work = stack.enter_context(temporary_folder("tflite"))
        fp32_path = tmp if calibration is None else work / "fp32.tflite"
        fp32_path.write_bytes(with_metadata(convert(model, batch, resolution), props))
        fp32 = LiteRTSession(fp32_path)
        fp32_check = check_against(fp32, model, images, describe)
        if calibration is None:
            return fp32_check
        content = convert(model, batch, resolution, calibration)
        tmp.write_bytes(content)
        props.update(LiteRTSession(tmp).quantization(),
                     quantization=f"{QUANTIZATION}, calibrated on {len(calibration)} images")
        tmp.write_bytes(with_metadata(content, props))
        int8 = LiteRTSession(tmp)
        int8_check = check_against(int8, model, images, describe, tolerance=None)
        agreement, fp32_top1, int8_top1, count = compare(fp32, int8, test_loader)
        guard(agreement, count, f"INT8 {Path(path).name}", min_agreement=min_agreement, force=force)
        return Int8Report(agreement, fp32_top1, int8_top1, count, fp32_check, int8_check.max_abs_diff,
                          fp32_path.stat().st_size, tmp.stat().st_size)


__all__ = ["LiteRTSession", "convert", "export_tflite", "read_metadata", "with_metadata"]
