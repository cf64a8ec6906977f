"""Inference latency and throughput of one model on several runtimes, measured in one run.

Runtimes (`RUNTIMES`):
* `eager`: the model as built, NCHW, BatchNorm unfused: the baseline every speed-up is relative to;
* `channels_last`: the inference model (`mobilenet.export.inference_model`: BatchNorm folded,
  channels_last), eager PyTorch;
* `compile`: `torch.compile` of the inference model, with Inductor's freezing (weights become
  constants, so oneDNN convolutions get pre-packed weights instead of reordering them on every
  call, which is much faster: benchmarks/results/latency.md);
* `onnxruntime`: the ONNX export of the inference model in an ONNX Runtime session, graph
  optimisations ALL, `threads` intra-op threads;
* `onnxruntime-int8`: the same quantized to INT8 (`mobilenet.export.quantize`), calibrated on
  digits images at the benchmark's resolution: latency does not depend on what the calibration saw.
* `openvino`, `openvino-bf16`: the same ONNX file compiled by OpenVINO at fp32 or bfloat16 (where
  the CPU has it); `openvino-int8`: the INT8 file above, run by OpenVINO.
* `executorch`, `executorch-int8`, `tflite`, `tflite-int8`: the phone exports (`mobilenet.export.phone`:
  ExecuTorch's XNNPACK program and LiteRT's model, fp32 or PT2E INT8, traced at the benchmark's
  batch), run by those runtimes' x86 Python builds where their extras are installed. They compare
  the phone runtimes with the server ones on this CPU; a phone's latency is measured on the phone.
* `auto`: what `eval`, `predict` and `runtime_model(..., "auto")` would run here
  (`mobilenet.export.choose`), chosen by measuring at this batch; its row names the choice. bf16
  and INT8 may compete only with images of the model's own data (`data_images`: a checkpoint's).

Peers, built the way a user of each tool would, with that tool's defaults (threads included):
* `onnxruntime-default`: `torch.onnx.export(model, (x,), path)` of the model as built (BatchNorm
  unfolded; torch's default exporter), run by `onnxruntime.InferenceSession(path)`;
* `openvino-default`: `openvino.convert_model(model, example_input=x)` compiled for "CPU" with no
  settings (which on a CPU with AMX or AVX-512 BF16 computes in bfloat16).

Each report also gives the compute-bound limit of the model on this machine: its floating-point
work (counted by `torch.utils.flop_counter`) divided by the fp32 matrix-multiply throughput measured
in the same rounds as the runtimes (`MatmulProbe`, the best product seen). No fp32 runtime can beat
it by much, since the 1x1 convolutions that hold most of the work are matrix multiplies; each fp32
result says what fraction of it it reaches.

After each runtime's warm-up, the timed calls are spread over `ROUNDS` rounds that interleave the
runtimes (in an order that rotates), so that slow changes in the load of a shared machine fall on
all of them alike; each turn starts with untimed calls (`settle`) so that no runtime pays for the
threads its predecessor left spinning. Each call is timed alone; the report gives the median, 10th
and 90th percentile latency and images/s (batch / median latency), with the machine, thread count,
library versions and load average.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenet.checkpoint import load_checkpoint
from mobilenet.checks import whole_number
from mobilenet.data import load_dataset
from mobilenet.export import choose, sample_images, training_data
from mobilenet.export.fold import inference_model
from mobilenet.export.formats import FORMATS
from mobilenet.export.litert import convert
from mobilenet.export.onnx import run
from mobilenet.export.phone_common import quiet
from mobilenet.export.pte import lower
from mobilenet.machine import MATMUL_CALLS, MatmulProbe, compute_bound, environment
from mobilenet.models import MobileNet, create_model
from mobilenet.optional import MissingPackage, require

RUNTIMES = ("eager", "channels_last", "compile", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-bf16",
            "openvino-int8", "executorch", "executorch-int8", "tflite", "tflite-int8", "auto", "onnxruntime-default",
            "openvino-default")
ALL = "all"  # every runtime above (the default)
ORT, OV = FORMATS["onnx"].needs, FORMATS["openvino"].needs
NEEDS = {"onnxruntime": ORT, "onnxruntime-int8": ORT, "openvino": OV, "openvino-bf16": OV,
         "openvino-int8": (*OV, *FORMATS["openvino"].int8_needs),
         "onnxruntime-default": (*ORT, "onnxscript"), "openvino-default": ("openvino",),
         **{f"{name}{kind}": FORMATS[name].needs for name in ("executorch", "tflite") for kind in ("", "-int8")}}
INT8_CALIBRATION_IMAGES = 32
ROUNDS = 5  # the timed calls of each runtime are spread over this many interleaved rounds
SETTLE_S = 0.1  # untimed calls at the start of each runtime's turn, in seconds of running it


def settle(runner: Callable[[], object], seconds: float = SETTLE_S) -> None:
    """Run `runner` untimed for `seconds` (at least once) before its timed calls.

    The runtime that ran before leaves its worker threads spinning for a while (ONNX Runtime's
    longer than OpenMP's), and on two cores a spinning thread takes a core from the next runtime:
    unsettled, single interleaved calls measured each runtime up to several times slower than it
    runs alone. Settling measures each runtime in its steady state, as a server answering
    requests back to back runs it, while the rounds still interleave.
    """
    deadline = time.perf_counter() + seconds
    runner()
    while time.perf_counter() < deadline:
        runner()


@dataclass
class Timing:
    """The timed calls of one runtime."""

    runtime: str
    batch: int
    seconds: list[float] = field(default_factory=list)
    setup_s: float = 0.0  # building, exporting, compiling and warming up
    max_abs_diff: float = 0.0  # largest logit difference from the first runtime (eager, if measured)

    def percentile_ms(self, q: float) -> float:
        return 1000 * float(np.percentile(self.seconds, q))

    @property
    def median_ms(self) -> float:
        return 1000 * statistics.median(self.seconds)

    def to_dict(self, eager: Timing | None = None) -> dict:
        result = {"runtime": self.runtime, "median_ms": self.median_ms, "p10_ms": self.percentile_ms(10),
                  "p90_ms": self.percentile_ms(90), "images_per_s": self.batch / (self.median_ms / 1000),
                  "runs": len(self.seconds), "setup_s": self.setup_s, "max_abs_diff": self.max_abs_diff}
        if eager is not None:
            result["latency_vs_eager"] = self.median_ms / eager.median_ms
            result["throughput_vs_eager"] = eager.median_ms / self.median_ms
        return result


def parse_runtimes(runtimes: str | Sequence[str] | None) -> list[str]:
    """A list of runtime names from "a,b,c" or a sequence (None or "all": all); ValueError for an
    unknown one."""
    if runtimes is None:
        return list(RUNTIMES)
    names = [b.strip() for b in runtimes.split(",")] if isinstance(runtimes, str) else list(runtimes)
    names = [b for b in names if b]
    if ALL in names:
        return list(RUNTIMES)
    unknown = [b for b in names if b not in RUNTIMES]
    if unknown or not names:
        raise ValueError(f"unknown runtime {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from: {', '.join(RUNTIMES)}")
    return list(dict.fromkeys(names))


def calibration_images(resolution: int, count: int = INT8_CALIBRATION_IMAGES, channels: int = 3) -> torch.Tensor:
    """Digits images (embedded, always available) resized to `resolution` and normalised."""

    return sample_images(load_dataset("digits", "train", resolution=resolution, channels=channels), count)


AUTO_ROWS = {"pytorch": "channels_last"}  # auto's candidate names that are another row's here


def prepare(runtime: str, model: nn.Module, images: torch.Tensor, workdir: str, threads: int,
            data_images: torch.Tensor | None = None, notes: dict | None = None,
            min_agreement: float | None = None) -> Callable[[], torch.Tensor | np.ndarray]:
    """A function that runs one forward pass of `runtime` on `images` (fixed, prepared outside the
    timing: a loader can produce channels_last or numpy batches directly). `notes[runtime]` is
    given `auto`'s Decision."""
    if runtime == "auto":
        chosen, decision = choose.choose(model, int(images.shape[-1]), len(images), images=data_images,
                                         threads=threads, min_agreement=min_agreement)
        if notes is not None:
            notes[runtime] = decision
        # timed as that runtime's own row is (numpy in, no tensor wrapping): the row costs what the choice costs
        same = AUTO_ROWS.get(decision.chosen, decision.chosen)
        if same in RUNTIMES and same != "auto":
            return prepare(same, model, images, workdir, threads, data_images, notes, min_agreement)
        return lambda: chosen(images)
    if runtime == "onnxruntime-default":
        return _plain_onnxruntime(model, images, Path(workdir) / "plain.onnx")
    if runtime == "openvino-default":
        import openvino as ov

        compiled = ov.Core().compile_model(ov.convert_model(model, example_input=images), "CPU")
        x = images.numpy()
        return lambda: compiled(x)[0]
    if runtime.startswith(("executorch", "tflite")):
        return _phone(runtime, model, images, Path(workdir), threads)
    if runtime == "eager":
        x = images.contiguous()
        return lambda: model(x)
    if runtime in ("channels_last", "compile"):
        fused = inference_model(model)
        x = images.contiguous(memory_format=torch.channels_last)
        if runtime == "compile":
            import torch._inductor.config as inductor_config

            torch._dynamo.reset()  # forget earlier models: their guards count towards the recompile limit
            fused = torch.compile(fused)
            # Compile now (on the first call), with freezing on. Passed as torch.compile(options=...),
            # it only partly applied, and the model ran markedly slower.
            with inductor_config.patch(freezing=True):
                fused(x)
        return lambda: fused(x)
    resolution = int(images.shape[-1])
    name, _, precision = runtime.partition("-")  # onnxruntime, openvino; fp32, bf16, int8
    calibration = calibration_images(resolution, channels=model.config.in_chans) if precision == "int8" else None
    sess = choose.onnx_session(choose.Candidate(name, precision or "fp32"), model, resolution, Path(workdir),
                               calibration, threads)
    x = np.ascontiguousarray(images.numpy())
    return lambda: run(sess, x)


def _phone(runtime: str, model: nn.Module, images: torch.Tensor, workdir: Path,
           threads: int) -> Callable[[], np.ndarray]:
    """A phone export traced at this batch, in its runtime (INT8 calibrated on digits images)."""
    batch, resolution = len(images), int(images.shape[-1])
    calibration = None
    if runtime.endswith("-int8"):
        calibration = calibration_images(resolution, max(INT8_CALIBRATION_IMAGES, batch), model.config.in_chans)
    format = FORMATS[runtime.partition("-")[0]]  # executorch, tflite
    path = workdir / f"{runtime}{format.suffix}"
    path.write_bytes((lower if format.name == "executorch" else convert)(model, batch, resolution, calibration))
    session = format.open(path, threads)
    x = np.ascontiguousarray(images.numpy())
    return lambda: session(x)


def _plain_onnxruntime(model: nn.Module, images: torch.Tensor, path: Path) -> Callable[[], np.ndarray]:
    """ONNX Runtime as a tutorial uses it: torch's default export of the model, a default session."""
    import onnxruntime as ort


    # the exporter's progress lines ("[torch.onnx] Obtain model graph...") kept out of the report,
    # and replayed only if it fails
    with quiet(), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(model, (images,), str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name, x = sess.get_inputs()[0].name, images.numpy()
    return lambda: sess.run(None, {name: x})[0]


def _as_tensor(output) -> torch.Tensor:
    return output.float() if torch.is_tensor(output) else torch.from_numpy(output).float()


@torch.inference_mode()
def measure(model: nn.Module, *, batch: int = 1, resolution: int = 224, runtimes: Sequence[str] | str | None = None,
            threads: int | None = None, iterations: int = 30, warmup: int = 5,
            progress: Callable[[str], None] | None = None, data_images: torch.Tensor | None = None,
            min_agreement: float | None = None) -> dict:
    """Latency of `model` on each runtime at `batch` x 3 x `resolution`^2, in one interleaved run.

    `data_images` (normalised images of the model's own data, e.g. a checkpoint's test images) let
    the `auto` row consider bf16 and INT8, judged by the guard (`min_agreement`, `mobilenet.export.guard`).

    Runtimes whose packages are missing, or that fail to build (e.g. no C++ compiler for
    `compile`), are listed under `skipped` with the reason, never raised. Returns a JSON-ready dict
    with `results` (one entry per runtime measured), `skipped` and `environment`.
    """
    names = parse_runtimes(runtimes)
    for name, value in (("batch", batch), ("resolution", resolution), ("iterations", iterations)):
        whole_number(value, name)
    whole_number(warmup, "warmup", minimum=0)
    previous_threads = torch.get_num_threads()
    threads = threads or previous_threads
    torch.set_num_threads(threads)
    say = progress or (lambda message: None)
    model = model.eval()
    images = torch.randn(model.config.input_shape(batch, resolution), generator=torch.Generator().manual_seed(0))
    runners: dict[str, Callable] = {}
    timings: dict[str, Timing] = {}
    skipped: list[dict] = []
    notes: dict = {}
    reference = None
    try:
        with tempfile.TemporaryDirectory(prefix="mobilenet-bench-") as workdir:
            for name in names:
                try:
                    require(*NEEDS.get(name, ()), purpose=name)
                except MissingPackage as missing:
                    skipped.append({"runtime": name, "reason": str(missing)})
                    say(f"{name}: skipped (not installed: the report says what to install)")
                    continue
                start = time.perf_counter()
                try:
                    runner = prepare(name, model, images, workdir, threads, data_images, notes, min_agreement)
                    output = _as_tensor(runner())
                    for _ in range(warmup):
                        runner()
                except Exception as error:  # a runtime that cannot run here is reported, not fatal
                    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
                    skipped.append({"runtime": name, "reason": f"failed: {type(error).__name__}: {reason}"})
                    say(f"{name}: skipped, {skipped[-1]['reason']}")
                    continue
                reference = output if reference is None else reference
                timing = Timing(name, batch, setup_s=time.perf_counter() - start)
                timing.max_abs_diff = float((output - reference).abs().max())
                runners[name], timings[name] = runner, timing
                say(f"{name}: ready in {timing.setup_s:.1f} s")
            order = list(runners)
            probe = MatmulProbe()  # the compute-bound limit, timed in every round beside the runtimes
            rounds = min(iterations, ROUNDS)
            for round_ in range(rounds):
                calls = iterations // rounds + (round_ < iterations % rounds)
                shift = round_ % max(1, len(order))
                for name in order[shift:] + order[:shift]:
                    settle(runners[name])
                    for _ in range(calls):
                        start = time.perf_counter()
                        runners[name]()
                        timings[name].seconds.append(time.perf_counter() - start)
                probe.time(MATMUL_CALLS)
        bound = compute_bound(model, batch, resolution, probe.gflops)
    finally:
        torch.set_num_threads(previous_threads)
    eager = timings.get("eager")
    results = [t.to_dict(eager) for t in timings.values()]
    for row in results:
        if row["runtime"] in notes:
            decision = notes[row["runtime"]]
            row["chosen"] = decision.chosen
            if decision.chosen in decision.agreement:  # a bf16 or INT8 choice: its top-1 agreement with fp32
                row["agreement"] = decision.agreement[decision.chosen]
        if not row.get("chosen", row["runtime"]).endswith("int8"):  # the fp32 limit says nothing of integer kernels
            row["of_compute_bound"] = bound["limit_ms"] / row["median_ms"]
    return {
        "model": model.config.to_dict() if isinstance(model, MobileNet) else type(model).__name__,
        "batch": batch, "resolution": resolution, "iterations": iterations, "warmup": warmup,
        "results": results,
        "skipped": skipped,
        "compute_bound": bound,
        "environment": environment(threads),
    }


def is_checkpoint(model: str) -> bool:
    """Whether `model` names a checkpoint file rather than a registered model."""
    return os.path.exists(model) or model.endswith(".safetensors")


AGREEMENT_IMAGES = 256  # test images that judge the auto row's bf16 and INT8 candidates


def checkpoint_images(checkpoint: str, resolution: int, count: int = AGREEMENT_IMAGES) -> torch.Tensor | None:
    """Test images of the data a checkpoint names in its metadata, at `resolution`, normalised as it
    expects (for the auto row: bf16 and INT8 may then compete); None if not found here."""

    _, meta = load_checkpoint(checkpoint, with_meta=True)
    source = training_data(meta, checkpoint)
    if source is None:
        return None
    try:
        test = source.load("test", meta, resolution)
    except (OSError, ValueError):
        return None
    return sample_images(test, count, meta=meta)


def build(model: str, *, width: float | None = None, num_classes: int = 1000, small_input: bool = False
          ) -> tuple[nn.Module, int | None]:
    """A model by registry name (random weights, width 1 unless given) or from a checkpoint file,
    and the checkpoint's resolution (None for a name)."""
    if is_checkpoint(model):
        if width is not None:
            raise ValueError(f"{model} is a checkpoint: its width is its own, drop --width")

        loaded, meta = load_checkpoint(model, with_meta=True)
        return loaded, meta.resolution

    torch.manual_seed(0)
    net = create_model(model, width_mult=1.0 if width is None else width, num_classes=num_classes,
                       small_input=small_input)
    return net.eval(), None


