"""ONNX export of the inference model, with its metadata and a check against PyTorch.

The file has one input, `input` (float32 N x C x H x W, RGB or grey (C = the metadata's in_chans), normalised with the metadata's mean and
std), with a dynamic batch dimension, and one output, `logits` (N x classes). Its metadata_props
carry what a user needs to feed it: class names, normalisation, resolution and the model
configuration (`read_metadata`).

Exporter: torch 2.13 has two. The default `dynamo=True` one (torch.export, then onnxscript) takes
seconds per model (and writes the weights to a separate file unless told not to); the TorchScript
one (`dynamo=False`) takes a fraction of a second and, for these models, gives the same operators
(Conv with the folded bias, Clip or Relu, Add, GlobalAveragePool, Flatten, Gemm) and the same ONNX
Runtime speed. We
use the TorchScript one (its DeprecationWarning is silenced here) because the benchmark exports
every model it measures, and keep the dynamo one a keyword away (`dynamo=True`, tested by hand)
for the day the TorchScript one is removed.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mobilenet.files import atomic_output
from mobilenet.optional import require
from mobilenet.export.fold import inference_model
from mobilenet.models import MobileNet

INPUT, OUTPUT = "input", "logits"
FORMAT = "mobilenet.onnx/1"
OPSET = 18  # the lowest the dynamo exporter writes; ONNX Runtime >= 1.14 and its quantizer run it
FP32_TOLERANCE = 1e-4  # max |logit difference| allowed between ONNX Runtime and PyTorch
PREPROCESSING = "float32 NCHW RGB: (pixel / 255 - mean) / std, at the resolution given"


@dataclass
class CheckResult:
    """How a written model compared with PyTorch's output on the same inputs."""

    max_abs_diff: float
    batch_sizes: tuple[int, ...]
    inputs: str  # what the inputs were, e.g. "8 digits test images" or "8 random inputs"

    def to_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "batch_sizes": list(self.batch_sizes), "inputs": self.inputs}


def metadata(meta=None, model: nn.Module | None = None, resolution: int | None = None) -> dict[str, str]:
    """The metadata_props of an exported model, from a checkpoint's ModelMeta, else the model's own
    configuration."""
    if meta is not None:
        props = meta.to_metadata()
    else:
        props = {"config": json.dumps(model.config.to_dict() if isinstance(model, MobileNet) else {})}
        if resolution is not None:
            props["resolution"] = str(resolution)
    props["format"] = FORMAT
    props["preprocessing"] = PREPROCESSING
    return props


def read_metadata(path: str | os.PathLike) -> dict:
    """An exported model's metadata_props, JSON values decoded (classes, mean, std, config...)."""
    require("onnx", purpose="reading an ONNX file")
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    decoded = {}
    for key, value in props.items():
        try:
            decoded[key] = json.loads(value)
        except ValueError:
            decoded[key] = value
    return decoded


def session(model: str | os.PathLike | bytes, threads: int | None = None):
    """An ONNX Runtime CPU session with every graph optimisation on and `threads` intra-op threads
    (default: torch's thread count, so both runtimes use the same cores)."""
    require("onnxruntime", purpose="running an ONNX model")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # warnings and below are noise here (e.g. unused initializers)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(sess, images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Logits of an ONNX Runtime session for a float32 N x C x H x W batch."""
    array = images.detach().cpu().contiguous().numpy() if torch.is_tensor(images) else images
    return sess.run([OUTPUT], {INPUT: np.ascontiguousarray(array, dtype=np.float32)})[0]


def check_against(sess, reference: nn.Module, images: torch.Tensor, describe: str,
                  tolerance: float | None = FP32_TOLERANCE) -> CheckResult:
    """Run `images` through the session one at a time and as one batch (which also tests the dynamic
    batch dimension) and through `reference`; raise ValueError if a logit differs by more than
    `tolerance` (None: only measure)."""
    reference.eval()  # (a PT2E program's eval() returns nothing)
    with torch.inference_mode():
        expected = reference(images).float().numpy()
    batched = run(sess, images)
    single = np.concatenate([run(sess, images[i:i + 1]) for i in range(min(len(images), 2))])
    diff = float(max(np.abs(batched - expected).max(), np.abs(single - expected[:len(single)]).max()))
    if not np.isfinite(diff):
        raise ValueError("exported model produced non-finite logits")
    if tolerance is not None and diff > tolerance:
        raise ValueError(f"exported model disagrees with PyTorch: max |logit difference| {diff:.2e} > {tolerance:g} "
                         f"on {describe}; nothing written")
    return CheckResult(diff, (1, len(images)), describe)


def to_onnx(model: nn.Module, path: str | os.PathLike, resolution: int, *, dynamo: bool = False,
            opset: int = OPSET, config=None) -> None:
    """Write `model` (fused, NCHW, as it is) to `path` with a dynamic batch; no check, not atomic.
    `config`: the model's configuration, for a traced program that does not carry one."""
    require("onnx", *(["onnxscript"] if dynamo else []), purpose="ONNX export")
    example = torch.zeros((config or model.config).input_shape(2, resolution))
    common = dict(input_names=[INPUT], output_names=[OUTPUT], opset_version=opset)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        # tf_same padding is computed from the input size as a Python int: right, since the graph's
        # height and width are fixed (only the batch is dynamic)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if dynamo:
            torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), **common)
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=False,
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, **common)


def add_metadata(path: str | os.PathLike, props: dict[str, str]) -> None:
    """Set metadata_props of the ONNX file at `path` (rewrites it in place)."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def export_onnx(model: nn.Module, path: str | os.PathLike, images: torch.Tensor, *, meta=None,
                describe: str = "check inputs", dynamo: bool = False) -> CheckResult:
    """Export `model` to ONNX at `path`, atomically, after checking ONNX Runtime against PyTorch.

    `model` is the model as trained (it is fused here; the check compares with the original, so it
    covers the fold too). `images` (N x C x H x W, normalised) set the resolution and are the
    check's inputs. `meta` (a checkpoint's ModelMeta) fills the metadata; without it, the model's
    own configuration does. Nothing is left at `path` if any step fails.
    """
    require("onnx", "onnxruntime", purpose="ONNX export")
    resolution = int(images.shape[-1])
    with atomic_output(path) as tmp:
        to_onnx(inference_model(model, channels_last=False), tmp, resolution, dynamo=dynamo)
        add_metadata(tmp, metadata(meta, model, resolution))
        result = check_against(session(tmp), model, images, describe)
    return result


class OnnxRuntimeModel(nn.Module):
    """An ONNX Runtime session behind a module's interface: a float image batch in, logits out."""

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(run(self.session, images))


__all__ = ["CheckResult", "FP32_TOLERANCE", "INPUT", "OUTPUT", "OnnxRuntimeModel", "add_metadata", "check_against",
           "export_onnx", "metadata", "read_metadata", "run", "session", "to_onnx"]
