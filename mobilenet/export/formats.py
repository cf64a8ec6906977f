"""The file formats `mobilenet export` writes, one record each, read by export (the suffix decides
the format; the packages to ask for; the writer), and by what opens a file to run it (the bench's rows,
`auto`'s candidates: the session).
Adding a format is adding its record here and its module with the writer the record names."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str  # as --format and the bench name it
    suffix: str  # what the file's name ends with (OpenVINO: the .xml beside its .bin)
    needs: tuple[str, ...]  # the packages it is written and checked with, as imported
    checked_by: str  # what runs the file here to check it against PyTorch
    # "module:function" that writes and checks a file of this format (`write` below); named, and imported
    # when used, because the writers' modules read this table (and some import heavy packages)
    writer: str
    # "module:callable" that opens a file of this format to run it here: callable(path, threads=...) gives a
    # session with ONNX Runtime's interface, run([output], {input: images}); None where nothing runs it here
    session: str | None = None
    phone: bool = False  # traced at a fixed batch for a phone runtime (phone.py)
    int8: bool = True  # has an INT8 form
    int8_needs: tuple[str, ...] = ()  # the packages its INT8 form needs besides `needs`
    calibrated: bool = True  # its INT8 form is calibrated on training images and compared with fp32 on test images

    def write(self, model, output, check, **options) -> dict:
        """Write `model` to `output` in this format, checked on the `check` images, and return the export
        report's entries (`check`, or an INT8 report's). `options`, the same for every writer: meta,
        describe, batch, int8, calibration, test_loader, min_agreement, force."""
        return _named(self.writer)(self.name, model, output, check, **options)

    def open(self, path, threads: int | None = None, **options):
        """A file of this format as a session (`session`) on `threads` threads; `options` are the
        session's own (OpenVINO: precision)."""
        if self.session is None:
            raise ValueError(f"{self.name} files are not run here ({self.checked_by})")
        return _named(self.session)(path, threads=threads, **options)


def _named(name: str):
    """The function or class "module:attribute" names, its module imported now."""
    module, attribute = name.split(":")
    return getattr(importlib.import_module(module), attribute)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", ".onnx", ("onnx", "onnxruntime"), "ONNX Runtime", "mobilenet.export.int8:write_onnx",
           "mobilenet.export.onnx:session"),
    Format("pt2", ".pt2", (), "torch.export's own program", "mobilenet.export.pt2:write", int8=False),
    Format("openvino", ".xml", ("onnx", "openvino"), "OpenVINO", "mobilenet.export.openvino:write",
           "mobilenet.export.openvino:session",
           int8_needs=("onnxruntime",)),  # ONNX Runtime's quantizer writes the INT8 ONNX the IR is made from
    Format("executorch", ".pte", ("executorch",), "ExecuTorch's Python runtime (XNNPACK)",
           "mobilenet.export.phone:export_phone", "mobilenet.export.pte:PteSession", phone=True),
    Format("tflite", ".tflite", ("litert_torch", "ai_edge_litert"), "LiteRT's interpreter (XNNPACK)",
           "mobilenet.export.phone:export_phone", "mobilenet.export.litert:LiteRTSession", phone=True),
    Format("coreml", ".mlpackage", ("coremltools",), "coremltools, structurally (Core ML runs on Apple's systems)",
           "mobilenet.export.phone:export_phone", phone=True, calibrated=False),  # INT8 weights only
)}

PHONE_FORMATS = tuple(name for name, f in FORMATS.items() if f.phone)
SUFFIXES = {name: f.suffix for name, f in FORMATS.items()}

__all__ = ["FORMATS", "Format", "PHONE_FORMATS", "SUFFIXES"]
