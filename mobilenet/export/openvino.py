"""OpenVINO as a runtime: our ONNX file (fp32, or the INT8 QDQ file of `export --int8`) compiled
for the CPU in a chosen precision.

OpenVINO reads the very ONNX file our export writes and checks, so every model reaches it through
one exporter. Its compiled model is wrapped behind ONNX Runtime's `run` interface
(`OpenVinoSession`), so the checks against PyTorch, the INT8 comparison and the benchmark serve
both runtimes unchanged. Precisions (`INFERENCE_PRECISION_HINT`): `f32`, checked against PyTorch
like the ONNX Runtime path; `bf16`, only where the CPU has it (AVX-512 BF16 or AMX), which OpenVINO
would otherwise pick by itself on such CPUs; an INT8 QDQ file runs its integer kernels as it is.

openvino is optional (`pip install 'mobilenet[openvino]'`, also installed by `make install`).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from mobilenet.optional import require

PRECISIONS = ("f32", "bf16")


def capabilities() -> list[str]:
    """What OpenVINO's CPU plugin says this CPU can compute in (e.g. FP32, BF16, INT8)."""
    require("openvino", purpose="the openvino backend")
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OpenVinoSession:
    """An OpenVINO compiled model with ONNX Runtime's `run(outputs, feeds)` interface."""

    def __init__(self, compiled, precision: str) -> None:
        self.compiled, self.precision = compiled, precision

    def run(self, outputs, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (array,) = feeds.values()
        return [np.asarray(self.compiled(array)[0])]


def session(path: str | os.PathLike, precision: str = "f32", threads: int | None = None) -> OpenVinoSession:
    """The ONNX file at `path` compiled for the CPU at `precision` ("f32" or "bf16"; an INT8 QDQ
    file keeps its integer operations either way), `threads` inference threads (default torch's),
    one stream, tuned for latency."""
    require("openvino", purpose="the openvino backend")
    import openvino as ov

    if precision not in PRECISIONS:
        raise ValueError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and "BF16" not in capabilities():
        raise ValueError("this CPU has no bfloat16 arithmetic (no AVX-512 BF16 or AMX): use precision f32")
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
              "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    return OpenVinoSession(core.compile_model(core.read_model(str(path)), "CPU", config), precision)


__all__ = ["OpenVinoSession", "PRECISIONS", "capabilities", "session"]
