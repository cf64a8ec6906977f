"""ExecuTorch: the inference model as a `.pte` program for ExecuTorch's runtime on a phone,
delegated to XNNPACK (the CPU backend ExecuTorch ships for Android and iOS), fp32 or INT8.

The program is checked by ExecuTorch's own Python runtime, which runs the same XNNPACK kernels on
this machine (`phone.py` says what is checked and how). Its metadata lives in `NAME.pte.json`
beside it (ExecuTorch programs have no free-form metadata); the `.pte` is written last, so a
program never sits beside another one's side file.

executorch is optional and large (`pip install 'mobilenet[executorch]'`).
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
from mobilenet.export.phone_common import PhoneSession, check_batch, phone_metadata, quantize_pt2e, quiet, side_file
from mobilenet.files import atomic_outputs, temporary_folder
from mobilenet.optional import require

QUANTIZATION = "int8 PT2E with ExecuTorch's XNNPACKQuantizer: per-channel symmetric int8 weights, int8 activations"


def lower(model: nn.Module, batch: int, resolution: int, calibration: torch.Tensor | None = None) -> bytes:
    """The `.pte` bytes of `model` (the model as trained; fused here) at a fixed input of `batch` x
    C x `resolution`^2, every operator XNNPACK runs delegated to it; INT8 when `calibration`
    (normalised images) is given."""
    require("executorch", purpose="ExecuTorch export")
    with quiet():
        fused = inference_model(model, channels_last=False)
        example = torch.zeros(model.config.input_shape(batch, resolution))
        if calibration is not None:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                                 get_symmetric_quantization_config)

            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            fused = quantize_pt2e(fused, example, quantizer, calibration)
        return program_bytes(fused, example)


def program_bytes(module: nn.Module, example: torch.Tensor) -> bytes:
    """The `.pte` bytes of `module` (ready for inference: fused, or a converted PT2E program) exported
    at `example`'s shape, every operator XNNPACK runs delegated to it."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad():
        program = torch.export.export(module, (example,))
    return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


class PteSession(PhoneSession):
    """A `.pte` program loaded by ExecuTorch's Python runtime. `threads` sets the size of
    ExecuTorch's thread pool (one per process, shared by every program)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        require("executorch", purpose="running an ExecuTorch program")
        with quiet():
            from executorch.runtime import Runtime

            if threads:
                from executorch.extension.pybindings import portable_lib

                portable_lib._unsafe_reset_threadpool(threads)
            self.method = Runtime.get().load_program(str(path)).load_method("forward")
        shape = tuple(self.method.metadata.input_tensor_meta(0).sizes())
        super().__init__(path, shape[0])

    def forward(self, images: np.ndarray) -> np.ndarray:
        return self.method.execute([torch.from_numpy(images)])[0].numpy()


def export_executorch(model: nn.Module, path: str | os.PathLike, images: torch.Tensor, *, meta=None,
                      describe: str = "check inputs", batch: int = 1, calibration: torch.Tensor | None = None,
                      test_loader=None, min_agreement: float | None = None,
                      force: bool = False) -> CheckResult | Int8Report:
    """Write `model` as an ExecuTorch program at `path` (.pte) with its metadata in `path`.json,
    both or neither, and only if its checks pass: fp32 logits within 1e-4 of PyTorch on `images`; with
    `calibration` (normalised training images) INT8, whose top-1 agreement with fp32 on
    `test_loader` is reported (Int8Report) and must pass the guard (`mobilenet.export.guard`)."""
    check_batch(batch)
    resolution = int(images.shape[-1])
    props = phone_metadata(meta, model, resolution, batch)
    with contextlib.ExitStack() as stack:
        tmp_side, tmp_pte = stack.enter_context(atomic_outputs(side_file(path), path))  # the program last
        work = stack.enter_context(temporary_folder("pte"))
        fp32_path = tmp_pte if calibration is None else work / "fp32.pte"
        fp32_path.write_bytes(lower(model, batch, resolution))
        fp32 = PteSession(fp32_path)
        fp32_check = check_against(fp32, model, images, describe)
        if calibration is None:
            tmp_side.write_text(json.dumps(props, indent=2) + "\n")
            return fp32_check
        tmp_pte.write_bytes(lower(model, batch, resolution, calibration))
        int8 = PteSession(tmp_pte)
        int8_check = check_against(int8, model, images, describe, tolerance=None)
        agreement, fp32_top1, int8_top1, count = compare(fp32, int8, test_loader)
        guard(agreement, count, f"INT8 {Path(path).name}", min_agreement=min_agreement, force=force)
        props["quantization"] = f"{QUANTIZATION}, calibrated on {len(calibration)} images"
        tmp_side.write_text(json.dumps(props, indent=2) + "\n")
        return Int8Report(agreement, fp32_top1, int8_top1, count, fp32_check, int8_check.max_abs_diff,
                          fp32_path.stat().st_size, tmp_pte.stat().st_size)


__all__ = ["PteSession", "export_executorch", "lower", "program_bytes"]
