"""Inference latency and throughput of one model on several backends, measured in one run.

Backends (`BACKENDS`):
* `eager`: the model as built, NCHW, BatchNorm unfused: the baseline every speed-up is relative to;
* `channels_last`: the inference model (`mobilenet.export.inference_model`: BatchNorm folded,
  channels_last), eager PyTorch;
* `compile`: `torch.compile` of the inference model, with Inductor's freezing (weights become
  constants, so oneDNN convolutions get pre-packed weights instead of reordering them on every
  call: V1 1.0-224 at batch 1 ran in 9.3 ms with freezing, 16 ms without);
* `onnxruntime`: the ONNX export of the inference model in an ONNX Runtime session, graph
  optimisations ALL, `threads` intra-op threads;
* `onnxruntime-int8`: the same quantized to INT8 (`mobilenet.export.quantize`), calibrated on
  digits images at the benchmark's resolution: latency does not depend on what the calibration saw.

Each report also gives the compute-bound limit of the model on this machine: its floating-point
work (counted by `torch.utils.flop_counter`) divided by the fp32 matrix-multiply throughput measured
in the same rounds as the backends (`MatmulProbe`, the best product seen). No fp32 backend can beat
it by much, since the 1x1 convolutions that hold most of the work are matrix multiplies; each fp32
result says what fraction of it it reaches.

After each backend's warm-up, the timed calls are spread over `ROUNDS` rounds that interleave the
backends (in an order that rotates), so that slow changes in the load of a shared machine fall on
all of them alike; each turn starts with untimed calls (`settle`) so that no backend pays for the
threads its predecessor left spinning. Each call is timed alone; the report gives the median, 10th
and 90th percentile latency and images/s (batch / median latency), with the machine, thread count,
library versions and load average.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenet.checks import whole_number
from mobilenet.optional import available
from mobilenet.export.fold import inference_model
from mobilenet.models import MobileNet

BACKENDS = ("eager", "channels_last", "compile", "onnxruntime", "onnxruntime-int8")
NEEDS = {"onnxruntime": ("onnx", "onnxruntime"), "onnxruntime-int8": ("onnx", "onnxruntime")}
SWEEP_WIDTHS = (1.0, 0.75, 0.5, 0.25)  # V1 paper, Figure 4 / Tables 6 and 7
SWEEP_RESOLUTIONS = (224, 192, 160, 128)
INT8_CALIBRATION_IMAGES = 32
ROUNDS = 5  # the timed calls of each backend are spread over this many interleaved rounds
SETTLE_S = 0.1  # untimed calls at the start of each backend's turn, in seconds of running it
MATMUL_SIZE = 2048  # square fp32 matrices for the throughput behind the compute-bound limit
MATMUL_CALLS = 2  # timed products per round


def settle(runner: Callable[[], object], seconds: float = SETTLE_S) -> None:
    """Run `runner` untimed for `seconds` (at least once) before its timed calls.

    The runtime that ran before leaves its worker threads spinning for a while: ONNX Runtime's for
    about 50 ms after a run, OpenMP's for about 10 ms (measured as CPU time spent while sleeping),
    and on two cores a spinning thread takes a core from the next runtime. On V2 1.0-224 at batch 1,
    single calls interleaved without settling measured eager at 20-58 ms and ONNX Runtime at 8-12 ms
    (several runs); settled, 12.4 and 4.0 ms (ONNX Runtime alone in its own process: 4.2 ms).
    Settling measures each backend in its steady state, as a server answering requests back to
    back runs it, while the rounds still interleave.
    """
    deadline = time.perf_counter() + seconds
    runner()
    while time.perf_counter() < deadline:
        runner()


@dataclass
class Timing:
    """The timed calls of one backend."""

    backend: str
    batch: int
    seconds: list[float] = field(default_factory=list)
    setup_s: float = 0.0  # building, exporting, compiling and warming up
    max_abs_diff: float = 0.0  # largest logit difference from the first backend (eager, if measured)

    def percentile_ms(self, q: float) -> float:
        return 1000 * float(np.percentile(self.seconds, q))

    @property
    def median_ms(self) -> float:
        return 1000 * statistics.median(self.seconds)

    def to_dict(self, eager: Timing | None = None) -> dict:
        result = {"backend": self.backend, "median_ms": self.median_ms, "p10_ms": self.percentile_ms(10),
                  "p90_ms": self.percentile_ms(90), "images_per_s": self.batch / (self.median_ms / 1000),
                  "runs": len(self.seconds), "setup_s": self.setup_s, "max_abs_diff": self.max_abs_diff}
        if eager is not None:
            result["latency_vs_eager"] = self.median_ms / eager.median_ms
            result["throughput_vs_eager"] = eager.median_ms / self.median_ms
        return result


def parse_backends(backends: str | Sequence[str] | None) -> list[str]:
    """A list of backend names from "a,b,c" or a sequence (None: all); ValueError for an unknown one."""
    if backends is None:
        return list(BACKENDS)
    names = [b.strip() for b in backends.split(",")] if isinstance(backends, str) else list(backends)
    names = [b for b in names if b]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown or not names:
        raise ValueError(f"unknown backend {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from: {', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def missing_packages(backend: str) -> list[str]:
    """The packages `backend` needs that are not installed."""
    return [name for name in NEEDS.get(backend, ()) if not available(name)]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The CPU features that decide which kernels run (AVX-512, VNNI for INT8, BF16, AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
    have = set(line.split(":", 1)[-1].split())
    return [flag for flag in wanted if flag in have]


def environment(threads: int) -> dict:
    """What a latency figure depends on: machine, threads, versions and how busy the machine was."""
    versions = {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}
    for name in ("onnx", "onnxruntime", "onnxscript"):
        if available(name):
            versions[name] = __import__(name).__version__
    return {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "threads": threads,
            "machine": platform.machine(), "system": platform.platform(), "versions": versions,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


class MatmulProbe:
    """The fp32 matrix-multiply throughput of this machine: products of two `size` x `size` random
    matrices, timed one by one; `gflops` is the best seen, since load only ever slows a product down.
    ONNX Runtime's MLAS and NumPy's OpenBLAS reach the same figure within a few percent here.
    Run it on the thread count being measured (`torch.set_num_threads`)."""

    def __init__(self, size: int = MATMUL_SIZE) -> None:
        self.size = size
        self.a, self.b = torch.randn(size, size), torch.randn(size, size)
        self.best_s = float("inf")
        self.a @ self.b  # untimed: first-call allocation

    def time(self, calls: int = 1) -> None:
        for _ in range(calls):
            start = time.perf_counter()
            self.a @ self.b
            self.best_s = min(self.best_s, time.perf_counter() - start)

    @property
    def gflops(self) -> float:
        return 2 * self.size**3 / self.best_s / 1e9


def forward_flops(model: nn.Module, batch: int, resolution: int) -> int:
    """Floating-point operations (2 per mult-add) of one forward pass, counted on a meta-device copy
    so that nothing is computed."""
    from torch.utils.flop_counter import FlopCounterMode

    shadow = copy.deepcopy(model).to("meta")
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        shadow(torch.empty(batch, 3, resolution, resolution, device="meta"))
    return int(counter.get_total_flops())


def compute_bound(model: nn.Module, batch: int, resolution: int, gflops: float) -> dict:
    """The least time an fp32 forward pass can take at `gflops`: its FLOPs at that throughput."""
    flops = forward_flops(model, batch, resolution)
    return {"flops": flops, "matmul_gflops": gflops, "limit_ms": flops / gflops / 1e6}


def calibration_images(resolution: int, count: int = INT8_CALIBRATION_IMAGES) -> torch.Tensor:
    """Digits images (embedded, always available) resized to `resolution` and normalised."""
    from mobilenet.data import load_dataset
    from mobilenet.export import sample_images

    return sample_images(load_dataset("digits", "train", resolution=resolution), count)


def prepare(backend: str, model: nn.Module, images: torch.Tensor, workdir: str,
            threads: int) -> Callable[[], torch.Tensor | np.ndarray]:
    """A function that runs one forward pass of `backend` on `images` (fixed, prepared outside the
    timing: a loader can produce channels_last or numpy batches directly)."""
    if backend == "eager":
        x = images.contiguous()
        return lambda: model(x)
    if backend in ("channels_last", "compile"):
        fused = inference_model(model)
        x = images.contiguous(memory_format=torch.channels_last)
        if backend == "compile":
            import torch._inductor.config as inductor_config

            torch._dynamo.reset()  # forget earlier models: their guards count towards the recompile limit
            fused = torch.compile(fused)
            # Compile now (on the first call), with freezing on. Passed as torch.compile(options=...),
            # it only partly applied: V1 1.0-224 ran in 12.0 ms that way, 9.3 ms this way.
            with inductor_config.patch(freezing=True):
                fused(x)
        return lambda: fused(x)
    from mobilenet.export.onnx import run, session, to_onnx

    resolution = int(images.shape[-1])
    path = Path(workdir) / "fp32.onnx"
    if not path.exists():
        to_onnx(inference_model(model, channels_last=False), path, resolution)
    if backend == "onnxruntime-int8":
        from mobilenet.export.int8 import quantize

        int8_path = Path(workdir) / "int8.onnx"
        quantize(path, int8_path, calibration_images(resolution))
        path = int8_path
    sess = session(path, threads)
    x = np.ascontiguousarray(images.numpy())
    return lambda: run(sess, x)


def _as_tensor(output) -> torch.Tensor:
    return output.float() if torch.is_tensor(output) else torch.from_numpy(output).float()


@torch.inference_mode()
def measure(model: nn.Module, *, batch: int = 1, resolution: int = 224, backends: Sequence[str] | str | None = None,
            threads: int | None = None, iterations: int = 30, warmup: int = 5,
            progress: Callable[[str], None] | None = None) -> dict:
    """Latency of `model` on each backend at `batch` x 3 x `resolution`^2, in one interleaved run.

    Backends whose packages are missing, or that fail to build (e.g. no C++ compiler for
    `compile`), are listed under `skipped` with the reason, never raised. Returns a JSON-ready dict
    with `results` (one entry per backend measured), `skipped` and `environment`.
    """
    names = parse_backends(backends)
    for name, value in (("batch", batch), ("resolution", resolution), ("iterations", iterations)):
        whole_number(value, name)
    whole_number(warmup, "warmup", minimum=0)
    previous_threads = torch.get_num_threads()
    threads = threads or previous_threads
    torch.set_num_threads(threads)
    say = progress or (lambda message: None)
    model = model.eval()
    images = torch.randn(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    runners: dict[str, Callable] = {}
    timings: dict[str, Timing] = {}
    skipped: list[dict] = []
    reference = None
    try:
        with tempfile.TemporaryDirectory(prefix="mobilenet-bench-") as workdir:
            for name in names:
                missing = missing_packages(name)
                if missing:
                    skipped.append({"backend": name, "reason": f"{', '.join(missing)} not installed "
                                                               "(pip install 'mobilenet[export]')"})
                    say(f"{name}: skipped, {skipped[-1]['reason']}")
                    continue
                start = time.perf_counter()
                try:
                    runner = prepare(name, model, images, workdir, threads)
                    output = _as_tensor(runner())
                    for _ in range(warmup):
                        runner()
                except Exception as error:  # a backend that cannot run here is reported, not fatal
                    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
                    skipped.append({"backend": name, "reason": f"failed: {type(error).__name__}: {reason}"})
                    say(f"{name}: skipped, {skipped[-1]['reason']}")
                    continue
                reference = output if reference is None else reference
                timing = Timing(name, batch, setup_s=time.perf_counter() - start)
                timing.max_abs_diff = float((output - reference).abs().max())
                runners[name], timings[name] = runner, timing
                say(f"{name}: ready in {timing.setup_s:.1f} s")
            order = list(runners)
            probe = MatmulProbe()  # the compute-bound limit, timed in every round beside the backends
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
        if not row["backend"].endswith("int8"):  # the fp32 limit says nothing of integer kernels
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


def build(model: str, *, width: float | None = None, num_classes: int = 1000, small_input: bool = False
          ) -> tuple[nn.Module, int | None]:
    """A model by registry name (random weights, width 1 unless given) or from a checkpoint file,
    and the checkpoint's resolution (None for a name)."""
    if is_checkpoint(model):
        if width is not None:
            raise ValueError(f"{model} is a checkpoint: its width is its own, drop --width")
        from mobilenet.checkpoint import load_checkpoint

        loaded, meta = load_checkpoint(model, with_meta=True)
        return loaded, meta.resolution
    from mobilenet.models import create_model

    torch.manual_seed(0)
    net = create_model(model, width_mult=1.0 if width is None else width, num_classes=num_classes,
                       small_input=small_input)
    return net.eval(), None


def format_report(report: dict) -> str:
    """A short human-readable table of a `measure` report."""
    config = report["model"]
    name = f"{config['name']} width {config['width_mult']:g}" if isinstance(config, dict) else str(config)
    env = report["environment"]
    lines = [f"{name} at {report['resolution']}x{report['resolution']}, batch {report['batch']}, "
             f"{env['threads']} threads, {report['iterations']} timed calls per backend in interleaved rounds; "
             f"{env['cpu']}, "
             f"torch {env['versions']['torch']}, onnxruntime {env['versions'].get('onnxruntime', 'not installed')}",
             f"{'backend':<18} {'median ms':>10} {'p10 ms':>9} {'p90 ms':>9} {'images/s':>10} {'vs eager':>9} "
             f"{'of bound':>9}"]
    for row in report["results"]:
        ratio = f"{row['latency_vs_eager']:.3f}x" if "latency_vs_eager" in row else "-"
        share = f"{100 * row['of_compute_bound']:.0f}%" if "of_compute_bound" in row else "-"
        lines.append(f"{row['backend']:<18} {row['median_ms']:>10.2f} {row['p10_ms']:>9.2f} {row['p90_ms']:>9.2f} "
                     f"{row['images_per_s']:>10.1f} {ratio:>9} {share:>9}")
    for row in report["skipped"]:
        lines.append(f"{row['backend']:<18} skipped: {row['reason']}")
    bound = report.get("compute_bound")
    if bound:
        lines.append(f"compute-bound limit (fp32): {bound['limit_ms']:.2f} ms = {bound['flops'] / 1e9:.2f} GFLOP at "
                     f"{bound['matmul_gflops']:.0f} GFLOP/s, the fp32 matrix multiply measured in this run")
    return "\n".join(lines)


# --- the paper's grid -----------------------------------------------------------------------

def sweep(model: str = "mobilenet_v1", *, widths: Sequence[float] = SWEEP_WIDTHS,
          resolutions: Sequence[int] = SWEEP_RESOLUTIONS, progress: Callable[[str], None] | None = None,
          **options) -> dict:
    """`measure` over the width x resolution grid of the V1 paper's Figure 4 (16 models by default),
    each row with its analytic mult-adds and parameters. `options` go to `measure`."""
    from mobilenet.cost import cost

    if is_checkpoint(model):
        raise ValueError(f"the sweep builds the grid's models by name; {model} is a checkpoint")
    say = progress or (lambda message: None)
    rows = []
    for width in widths:
        for resolution in resolutions:
            net, _ = build(model, width=width)
            report = measure(net, resolution=resolution, **options)
            analytic = cost(model, resolution, width_mult=width)
            rows.append({"width": width, "resolution": resolution, "macs": analytic.macs, "params": analytic.params,
                         "compute_bound": report["compute_bound"],
                         "results": report["results"], "skipped": report["skipped"]})
            best = min(report["results"], key=lambda r: r["median_ms"], default=None)
            say(f"{model} {width:g}-{resolution}: {analytic.macs / 1e6:.0f}M mult-adds"
                + (f", fastest {best['backend']} {best['median_ms']:.2f} ms" if best else ""))
    return {"model": model, "batch": options.get("batch", 1), "rows": rows,
            "environment": environment(options.get("threads") or torch.get_num_threads())}


def sweep_table(result: dict) -> str:
    """The sweep as a markdown table: one row per model, median ms per backend and the fp32
    compute-bound limit."""
    backends = list(dict.fromkeys(r["backend"] for row in result["rows"] for r in row["results"]))
    head = ("| model | million mult-adds | million params | " + " | ".join(f"{b} ms" for b in backends)
            + " | fp32 compute bound ms |")
    lines = [head, "|" + " --- |" * (4 + len(backends))]
    for row in result["rows"]:
        times = {r["backend"]: r["median_ms"] for r in row["results"]}
        cells = " | ".join(f"{times[b]:.2f}" if b in times else "-" for b in backends)
        lines.append(f"| {row['width']:g}-{row['resolution']} | {row['macs'] / 1e6:.0f} | {row['params'] / 1e6:.2f} "
                     f"| {cells} | {row['compute_bound']['limit_ms']:.2f} |")
    return "\n".join(lines)


def plot_sweep(result: dict, path: str | os.PathLike) -> None:
    """Measured latency against mult-adds, log-log, one series per backend: the paper's Figure 4
    with measured time in place of accuracy's companion axis."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from mobilenet.plots import _save

    fig, ax = plt.subplots(figsize=(7.5, 5))
    backends = list(dict.fromkeys(r["backend"] for row in result["rows"] for r in row["results"]))
    for backend in backends:
        points = sorted((row["macs"] / 1e6, r["median_ms"]) for row in result["rows"]
                        for r in row["results"] if r["backend"] == backend)
        ax.plot(*zip(*points), "o-", label=backend, alpha=0.85)
    bound = sorted((row["macs"] / 1e6, row["compute_bound"]["limit_ms"]) for row in result["rows"])
    if bound:
        ax.plot(*zip(*bound), "k--", label="fp32 compute bound", alpha=0.6)
    if backends:
        first = backends[0]
        for row in result["rows"]:
            ms = next((r["median_ms"] for r in row["results"] if r["backend"] == first), None)
            if ms is not None:
                ax.annotate(f"{row['width']:g}-{row['resolution']}", (row["macs"] / 1e6, ms), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
    env = result["environment"]
    ax.set(xscale="log", yscale="log", xlabel="million mult-adds (analytic)", ylabel="median latency (ms)",
           title=f"{result['model']}, batch {result['batch']}: latency against mult-adds\n"
                 f"{env['cpu']}, {env['threads']} threads, torch {env['versions']['torch']}")
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers (10, 20, 50...) rather than 2x10^1
        axis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    _save(fig, path)


def write_sweep(result: dict, folder: str | os.PathLike) -> list[Path]:
    """Write the sweep's JSON, markdown table and PNG plot into `folder`; returns their paths."""
    import json

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder {folder} does not exist")
    stem = folder / f"latency_sweep_{result['model']}_batch{result['batch']}"
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(sweep_table(result) + "\n")
    plot_sweep(result, paths[2])
    return paths


__all__ = ["BACKENDS", "MatmulProbe", "Timing", "build", "compute_bound", "environment", "format_report", "forward_flops",
           "is_checkpoint", "measure", "parse_backends", "plot_sweep", "settle", "sweep", "sweep_table",
           "write_sweep"]
