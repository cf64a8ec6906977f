"""The ways to run a trained model for `eval` and `predict`, each checked against PyTorch.

`auto` measures what is installed and takes the fastest that passes its checks
(`mobilenet.export.choose`); `onnxruntime` and `openvino` run the checked ONNX export (OpenVINO at
fp32); `pytorch` is the fused model (`inference_model`).
"""

from __future__ import annotations

import torch
from torch import nn

from mobilenet import cache
from mobilenet.export import choose, onnx
from mobilenet.export.fold import inference_model
from mobilenet.export.formats import FORMATS
from mobilenet.files import temporary_folder
from mobilenet.optional import require

RUNTIMES = ("auto", "onnxruntime", "openvino", "pytorch")
NEEDS = {"onnxruntime": FORMATS["onnx"].needs, "openvino": FORMATS["openvino"].needs}  # both run the ONNX export
RANDOM_CHECKS = 2  # random inputs a runtime is checked on before use (an export checks test images)


def resolve_runtime(runtime: str = "auto") -> str:
    """`runtime` if it is one of `RUNTIMES` ("auto" is decided by `runtime_model`, by measuring);
    ValueError for an unknown name."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose from: {', '.join(RUNTIMES)}")
    return runtime


def runtime_model(model: nn.Module, resolution: int, runtime: str = "auto", threads: int | None = None, *,
                  batch: int = 1, images: torch.Tensor | None = None, calibration: torch.Tensor | None = None,
                  model_id: str | None = None, min_agreement: float | None = None, say=None) -> tuple[nn.Module, str]:
    """`model` in the inference form `runtime` names, checked, and that form's name.

    "auto" measures every candidate installed here at `batch` (`mobilenet.export.choose`): fp32
    ones checked against PyTorch, bf16 and INT8 ones only with `images` of the model's own data
    and when their top-1 agreement passes the guard (`min_agreement`; `mobilenet.export.guard`); the decision is cached under the data root by `model_id`, and
    `say(line)` is told what was chosen and why. "onnxruntime" and "openvino" export the fused
    model to a temporary ONNX file, open it (OpenVINO at fp32) and check it against `model` on
    random inputs at batch 1 and 2 (logits within `FP32_TOLERANCE`, else ValueError), exactly as
    `mobilenet export` does; "pytorch" is `inference_model(model)`.
    """
    runtime = resolve_runtime(runtime)
    model = model.eval()
    if runtime == "auto":
        fast, decision = choose.choose(model, resolution, batch, images=images, calibration=calibration,
                                       model_id=model_id, cache=cache.folder() / choose.CACHE_FILE, threads=threads,
                                       min_agreement=min_agreement)
        if say:
            say(decision.describe())
        return fast, decision.chosen
    if runtime == "pytorch":
        return inference_model(model), runtime
    require(*NEEDS[runtime], purpose=f"the {runtime} runtime")
    with temporary_folder("runtime") as work:
        fast = choose.build(choose.Candidate(runtime), model, resolution, work, None, threads)
    images = torch.randn(model.config.input_shape(RANDOM_CHECKS, resolution),
                         generator=torch.Generator().manual_seed(0))
    onnx.check_against(fast.session, model, images, "random inputs")
    return fast, runtime


__all__ = ["NEEDS", "RUNTIMES", "resolve_runtime", "runtime_model"]
