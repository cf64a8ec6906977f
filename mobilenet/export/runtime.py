"""The ways to run a trained model for `eval` and `predict`, each checked against PyTorch.

`auto` is ONNX Runtime when it is installed (it runs our models several times faster than eager
PyTorch: benchmarks/results/latency.md), else the fused PyTorch model (`inference_model`);
`openvino` compiles the same ONNX file with OpenVINO at fp32; `pytorch` is the fused model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from mobilenet.optional import available, require
from mobilenet.export.fold import inference_model

RUNTIMES = ("auto", "onnxruntime", "openvino", "pytorch")
NEEDS = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}
CHECK_IMAGES = 2


class OnnxRuntimeModel(nn.Module):
    """An ONNX Runtime session behind a module's interface: a float image batch in, logits out."""

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from mobilenet.export.onnx import run

        return torch.from_numpy(run(self.session, images))


def resolve_runtime(runtime: str = "auto") -> str:
    """`runtime` itself, or for "auto" the fastest one installed; ValueError for an unknown name."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown backend {runtime!r}; choose from: {', '.join(RUNTIMES)}")
    if runtime == "auto":
        return "onnxruntime" if available("onnx") and available("onnxruntime") else "pytorch"
    return runtime


def runtime_model(model: nn.Module, resolution: int, runtime: str = "auto",
                  threads: int | None = None) -> tuple[nn.Module, str]:
    """`model` in its fastest inference form and the runtime's name.

    "onnxruntime" and "openvino" export the fused model to a temporary ONNX file, open it (OpenVINO
    at fp32) and check it against `model` on random inputs at batch 1 and 2 (logits within
    `FP32_TOLERANCE`, else ValueError), exactly as `mobilenet export` does; "pytorch" is
    `inference_model(model)`.
    """
    runtime = resolve_runtime(runtime)
    model = model.eval()
    if runtime == "pytorch":
        return inference_model(model), runtime
    require(*NEEDS[runtime], purpose=f"the {runtime} backend")
    from mobilenet.export import openvino
    from mobilenet.export.onnx import check_against, session, to_onnx

    with tempfile.TemporaryDirectory(prefix="mobilenet-runtime-") as work:
        path = Path(work) / "model.onnx"
        to_onnx(inference_model(model, channels_last=False), path, resolution)
        sess = session(path, threads) if runtime == "onnxruntime" else openvino.session(path, "f32", threads)
    images = torch.randn(CHECK_IMAGES, model.config.in_chans, resolution, resolution,
                         generator=torch.Generator().manual_seed(0))
    check_against(sess, model, images, "random inputs")
    return OnnxRuntimeModel(sess), runtime


__all__ = ["RUNTIMES", "OnnxRuntimeModel", "resolve_runtime", "runtime_model"]
