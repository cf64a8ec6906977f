"""The file formats `mobilenet export` writes, one record each, read by export (the suffix decides
the format; the packages to ask for), the phone dispatch, the bench's rows and `auto`'s runtimes.
Adding a format is adding its record here and its writer module (phone.py dispatches the phones')."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str  # as --format and the bench name it
    suffix: str  # what the file's name ends with (OpenVINO: the .xml beside its .bin)
    needs: tuple[str, ...]  # the packages it is written and checked with, as imported
    checked_by: str  # what runs the file here to check it against PyTorch
    phone: bool = False  # traced at a fixed batch for a phone runtime (phone.py)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", ".onnx", ("onnx", "onnxruntime"), "ONNX Runtime"),
    Format("pt2", ".pt2", (), "torch.export's own program"),
    Format("openvino", ".xml", ("onnx", "openvino"), "OpenVINO"),
    Format("executorch", ".pte", ("executorch",), "ExecuTorch's Python runtime (XNNPACK)", phone=True),
    Format("tflite", ".tflite", ("litert_torch", "ai_edge_litert"), "LiteRT's interpreter (XNNPACK)", phone=True),
    Format("coreml", ".mlpackage", ("coremltools",), "coremltools, structurally (Core ML runs on Apple's systems)",
           phone=True),
)}

PHONE_FORMATS = tuple(name for name, f in FORMATS.items() if f.phone)
SUFFIXES = {name: f.suffix for name, f in FORMATS.items()}

__all__ = ["FORMATS", "Format", "PHONE_FORMATS", "SUFFIXES"]
