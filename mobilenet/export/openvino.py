"""OpenVINO as a runtime: our ONNX file (fp32, or the INT8 QDQ file of `export --int8`) compiled
for the CPU in a chosen precision.

OpenVINO reads the very ONNX file our export writes and checks, so every model reaches it through
one exporter. Its compiled model is wrapped behind ONNX Runtime's `run` interface
(`OpenVinoSession`), so the checks against PyTorch, the INT8 comparison and the benchmark serve
both runtimes unchanged. Precisions (`INFERENCE_PRECISION_HINT`): `f32`, checked against PyTorch
like the ONNX Runtime path; `bf16`, only where the CPU has it (AVX-512 BF16 or AMX), which OpenVINO
would otherwise pick by itself on such CPUs; an INT8 QDQ file runs its integer kernels as it is.

`export_openvino` writes OpenVINO's own format (IR: an `.xml` graph and a `.bin` of weights beside
it) from the same checked ONNX file, fp32 or INT8, with the ONNX file's metadata in the IR's
`rt_info` under `mobilenet` (`read_metadata`), and checks the written IR as the ONNX export is
checked: fp32 logits within 1e-4 of PyTorch; INT8 top-1 agreement with fp32 on test images.

openvino is optional (`pip install 'mobilenet[openvino]'`, also installed by `make install`).
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
from mobilenet.export.guard import guard
from mobilenet.export.int8 import Int8Report, compare, describe_quantization, quantize
from mobilenet.export.onnx import check_against, metadata, to_onnx
from mobilenet.files import atomic_outputs, temporary_folder
from mobilenet.optional import require

PRECISIONS = ("f32", "bf16")
RT_INFO = "mobilenet"  # the IR's rt_info section that holds our metadata


def capabilities() -> list[str]:
    """What OpenVINO's CPU plugin says this CPU can compute in (e.g. FP32, BF16, INT8)."""
    require("openvino", purpose="the openvino runtime")
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OpenVinoSession:
    """An OpenVINO compiled model with ONNX Runtime's `run(outputs, feeds)` interface."""

    def __init__(self, compiled, precision: str) -> None:
        self.compiled, self.precision = compiled, precision

    def run(self, outputs, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (array,) = feeds.values()
        return [np.asarray(self.compiled(array)[0])]


def session(path: str | os.PathLike, precision: str = "f32", threads: int | None = None, *,
            weights: str | os.PathLike | None = None) -> OpenVinoSession:
    """The model at `path` (our ONNX file, or an IR whose .bin is `weights`, default beside it)
    compiled for the CPU at `precision` ("f32" or "bf16"; an INT8 QDQ file keeps its integer
    operations either way), `threads` inference threads (default torch's), one stream, tuned for
    latency."""
    require("openvino", purpose="the openvino runtime")
    import openvino as ov

    if precision not in PRECISIONS:
        raise ValueError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and "BF16" not in capabilities():
        raise ValueError("this CPU has no bfloat16 arithmetic (no AVX-512 BF16 or AMX): use precision f32")
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
              "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    model = core.read_model(str(path), None if weights is None else str(weights))
    return OpenVinoSession(core.compile_model(model, "CPU", config), precision)


def ir_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """The `.xml` and `.bin` files of the IR named `path` (which must end in .xml)."""
    path = Path(path)
    if path.suffix.lower() != ".xml":
        raise ValueError(f"an OpenVINO IR is an .xml file with a .bin beside it: give --output NAME.xml, not {path}")
    return path, path.with_suffix(".bin")


def write_ir(onnx_path: str | os.PathLike, xml: Path, bin_: Path, props: dict[str, str]) -> None:
    """Convert the ONNX file to IR at `xml` and `bin_` (the weights kept in fp32), with `props` in
    its rt_info; not atomic, no check."""
    require("openvino", purpose="OpenVINO IR export")
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    for key, value in props.items():
        model.set_rt_info(value, [RT_INFO, key])
    ov.save_model(model, str(xml), compress_to_fp16=False)
    written = xml.with_suffix(".bin")
    if written != bin_:
        os.replace(written, bin_)


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata an IR written by `export_openvino` carries (JSON values decoded), as
    `mobilenet.export.read_metadata` gives it for an ONNX file."""
    require("openvino", purpose="reading an OpenVINO IR")
    import openvino as ov

    model = ov.Core().read_model(str(path))
    if not model.has_rt_info([RT_INFO]):
        raise ValueError(f"{path} carries no mobilenet metadata (not written by mobilenet export)")
    decoded = {}
    section = model.get_rt_info()[RT_INFO]
    for key in section if isinstance(section, dict) else section.astype(dict):
        value = model.get_rt_info([RT_INFO, key]).astype(str)
        try:
            decoded[key] = json.loads(value)
        except ValueError:
            decoded[key] = value
    return decoded


def export_openvino(model: nn.Module, path: str | os.PathLike, images: torch.Tensor, *, meta=None,
                    describe: str = "check inputs", calibration: torch.Tensor | None = None, test_loader=None,
                    min_agreement: float | None = None, force: bool = False):
    """Write `model` as OpenVINO IR at `path` (.xml, with its .bin), checked, atomically.

    fp32 (no `calibration`): the IR must give PyTorch's logits within 1e-4 on `images`; returns a
    CheckResult. INT8 (`calibration` images given): our INT8 QDQ file (`mobilenet.export.quantize`)
    converted to IR, compared with the fp32 model in OpenVINO over `test_loader`; returns an
    Int8Report, after the guard (`mobilenet.export.guard`). The .xml and .bin are replaced together
    (`atomic_outputs`), and neither if a check fails.
    """
    require("onnx", "openvino", purpose="OpenVINO IR export")
    xml, bin_ = ir_paths(path)
    resolution = int(images.shape[-1])
    props = metadata(meta, model, resolution)
    props["format"] = "mobilenet.openvino/1"
    with contextlib.ExitStack() as stack:
        tmp_bin, tmp_xml = stack.enter_context(atomic_outputs(bin_, xml))  # the .xml last: the commit point
        work = stack.enter_context(temporary_folder("openvino"))
        fp32_onnx = work / "fp32.onnx"
        to_onnx(inference_model(model, channels_last=False), fp32_onnx, resolution)
        if calibration is None:
            write_ir(fp32_onnx, tmp_xml, tmp_bin, props)
            return check_against(session(tmp_xml, weights=tmp_bin), model, images, describe)
        fp32_session = session(fp32_onnx)
        fp32_check = check_against(fp32_session, model, images, describe)
        int8_onnx = work / "int8.onnx"
        reduced = quantize(fp32_onnx, int8_onnx, calibration)
        props["quantization"] = describe_quantization(len(calibration), reduced)
        write_ir(int8_onnx, tmp_xml, tmp_bin, props)
        int8_session = session(tmp_xml, weights=tmp_bin)
        int8_check = check_against(int8_session, model, images, describe, tolerance=None)
        agreement, fp32_top1, int8_top1, count = compare(fp32_session, int8_session, test_loader)
        guard(agreement, count, f"INT8 {xml.name}", min_agreement=min_agreement, force=force)
        fp32_bytes = fp32_onnx.stat().st_size
        return Int8Report(agreement, fp32_top1, int8_top1, count, fp32_check, int8_check.max_abs_diff,
                          fp32_bytes, tmp_bin.stat().st_size + tmp_xml.stat().st_size)


def write(format: str, model: nn.Module, output: str | os.PathLike, check: torch.Tensor, *, meta=None,
          describe: str = "check inputs", batch: int = 1, int8: bool = False,
          calibration: torch.Tensor | None = None, test_loader=None, min_agreement: float | None = None,
          force: bool = False) -> dict:
    """The openvino format's writer (`mobilenet.export.formats`): `export_openvino`, INT8 if `int8`."""
    result = export_openvino(model, output, check, meta=meta, describe=describe,
                             calibration=calibration if int8 else None, test_loader=test_loader,
                             min_agreement=min_agreement, force=force)
    return result.to_dict() if int8 else {"check": result.to_dict()}


__all__ = ["OpenVinoSession", "PRECISIONS", "RT_INFO", "capabilities", "export_openvino", "ir_paths",
           "read_metadata", "session", "write", "write_ir"]
