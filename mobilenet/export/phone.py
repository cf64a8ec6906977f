"""What the phone exports share: ExecuTorch (`pte.py`), LiteRT (`litert.py`) and Core ML (`coreml.py`).

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

import contextlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenet.export.onnx import metadata

PHONE_FORMATS = ("executorch", "tflite", "coreml")
SUFFIXES = {"executorch": ".pte", "tflite": ".tflite", "coreml": ".mlpackage"}
NEEDS = {"executorch": ("executorch",), "tflite": ("litert_torch", "ai_edge_litert"), "coreml": ("coremltools",)}
RUNTIME = {"executorch": "ExecuTorch's Python runtime (XNNPACK)", "tflite": "LiteRT's interpreter (XNNPACK)"}
FORMAT = "mobilenet.phone/1"
SIDE_FILE = ".json"  # ExecuTorch's metadata: NAME.pte -> NAME.pte.json


@contextlib.contextmanager
def quiet():
    """Silence what the converters and runtimes print while they import, convert and load: their
    own deprecation notices, optional kernels they lack, CPU probing written by C++ straight to
    the stderr file descriptor, progress bars. If the block fails, what they printed is replayed
    on stderr before the error goes on, so nothing that explains a failure is lost."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def phone_metadata(meta, model: nn.Module, resolution: int, batch: int) -> dict:
    """What an app needs to feed the file, as JSON values: the checkpoint's metadata (classes, mean,
    std, resolution, configuration) with the input's fixed shape, layout and channel order."""
    props = decode(metadata(meta, model, resolution))
    shape = model.config.input_shape(batch, resolution)
    order = "RGB" if model.config.in_chans == 3 else "grey"
    props.update(format=FORMAT, batch_size=batch, input_shape=list(shape), layout="NCHW", channel_order=order,
                 preprocessing=f"float32 {' x '.join(map(str, shape))} (NCHW, {order}): (pixel / 255 - mean) / std")
    return props


def decode(props: dict[str, str]) -> dict:
    """String metadata values decoded where they hold JSON (lists, numbers, objects)."""
    decoded = {}
    for key, value in props.items():
        try:
            decoded[key] = json.loads(value)
        except (TypeError, ValueError):
            decoded[key] = value
    return decoded


def side_file(path: str | os.PathLike) -> Path:
    """The JSON file that holds an ExecuTorch program's metadata: NAME.pte -> NAME.pte.json."""
    path = Path(path)
    return path.with_name(path.name + SIDE_FILE)


def read_phone_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a phone export (.pte, .tflite or .mlpackage), as JSON values."""
    suffix = Path(path).suffix
    if suffix == SUFFIXES["executorch"]:
        return json.loads(side_file(path).read_text())
    if suffix == SUFFIXES["tflite"]:
        from mobilenet.export.litert import read_metadata

        return read_metadata(path)
    if suffix == SUFFIXES["coreml"]:
        from mobilenet.export.coreml import read_metadata

        return read_metadata(path)
    raise ValueError(f"{path} is not a phone export: expected one of {', '.join(SUFFIXES.values())}")


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
    """Write `model` to `output` in a phone format, checked as this module's docstring says; `int8`:
    quantized (ExecuTorch and LiteRT calibrate on `calibration` images and compare with fp32 on
    `test_loader`; Core ML's int8 weights need neither). Returns a JSON-ready report: `check`
    (fp32) or the Int8Report's fields, and what checked it."""
    if format == "coreml":
        from mobilenet.export.coreml import export_coreml

        return export_coreml(model, output, images, meta=meta, batch=batch, int8=int8)
    if format == "executorch":
        from mobilenet.export.pte import export_executorch as export
    else:
        from mobilenet.export.litert import export_tflite as export
    result = export(model, output, images, meta=meta, describe=describe, batch=batch, calibration=calibration,
                    test_loader=test_loader, min_agreement=min_agreement, force=force)
    report = {"checked_by": RUNTIME[format]}
    if not int8:
        report["check"] = result.to_dict()
    else:
        report.update(result.to_dict())
    return report


def check_batch(batch: int) -> int:
    """A batch size a phone file can be traced at."""
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 1024:
        raise ValueError(f"batch size must be a whole number from 1 to 1024, got {batch!r}")
    return batch


class PhoneSession:
    """A phone file run by its Python runtime: `__call__` takes exactly the file's batch (as the
    phone does); `run(outputs, feeds)` (ONNX Runtime's interface) feeds any number of images in
    chunks of it, padding the last one with zeros and dropping their logits."""

    def __init__(self, path: str | os.PathLike, batch: int) -> None:
        self.path, self.batch = Path(path), batch

    def forward(self, images: np.ndarray) -> np.ndarray:  # one batch of exactly self.batch images
        raise NotImplementedError

    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        array = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
        if array.ndim != 4 or array.shape[0] != self.batch:
            raise ValueError(f"{self.path.name} takes a batch of {self.batch} (fixed when it was exported: "
                             f"--batch-size), got an input of shape {tuple(array.shape)}")
        return self.forward(np.ascontiguousarray(array, dtype=np.float32))

    def run(self, outputs, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (array,) = feeds.values()
        chunks = []
        for start in range(0, len(array), self.batch):
            chunk = array[start:start + self.batch]
            short = self.batch - len(chunk)
            if short:
                chunk = np.concatenate([chunk, np.zeros((short, *chunk.shape[1:]), chunk.dtype)])
            chunks.append(self(chunk)[:self.batch - short])
        return [np.concatenate(chunks)]


def quantize_pt2e(fused: nn.Module, example: torch.Tensor, quantizer, calibration: torch.Tensor,
                  prepare=None, convert=None) -> torch.fx.GraphModule:
    """`fused` quantized by PyTorch's PT2E flow with `quantizer`, its observers calibrated on the
    normalised images `calibration` in batches of len(`example`) (the traced shape; a remainder
    that does not fill a batch is left out). `prepare`/`convert`: the runtime's own PT2E functions
    (default torchao's)."""
    if prepare is None or convert is None:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        prepare, convert = prepare or prepare_pt2e, convert or convert_pt2e
    batch = len(example)
    if len(calibration) < batch:
        raise ValueError(f"INT8 calibration needs at least {batch} images (the batch size), got {len(calibration)}")
    graph = torch.export.export(fused, (example,)).module()
    prepared = prepare(graph, quantizer)
    with torch.no_grad():
        for start in range(0, len(calibration) - batch + 1, batch):
            prepared(calibration[start:start + batch])
    return convert(prepared)


__all__ = ["FORMAT", "NEEDS", "PHONE_FORMATS", "PhoneSession", "SUFFIXES", "check_batch",
           "decode", "export_phone", "phone_metadata", "phone_outputs", "quiet", "quantize_pt2e", "read_phone_metadata", "side_file"]
