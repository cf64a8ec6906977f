"""`auto`: the fastest verified way to run a model on this machine, chosen by measuring.

Which runtime and precision is fastest depends on the CPU (ONNX Runtime or OpenVINO, fp32, bf16 on
CPUs with AMX or AVX-512 BF16, INT8 on VNNI), so nothing is assumed: every candidate installed
here is built and timed, interleaved, at the batch size in use, and the fastest wins. A candidate
must earn its place first:

* fp32 candidates must compute what PyTorch computes: logits within `FP32_TOLERANCE` (1e-4);
* bf16 and INT8 candidates change the arithmetic, so they are considered only when the call brings
  images of the model's own data (labelled or for calibration), and kept only if their top-1 agrees
  with fp32 PyTorch as the one guard of reduced precision requires (`mobilenet.export.guard`).

The decision is cached per (model, CPU, runtime versions, batch, resolution, candidates, threshold) in
`<data root>/runtime-choices.json`, so the second call does not measure again; anything in the key
that changes (a retrained checkpoint, another CPU, an upgraded runtime) measures afresh. A cached
decision is used only if it is well formed and its choice still passes the guard; otherwise it is
measured again, with a line saying why.

`$MOBILENET_RUNTIME` (a candidate's name, e.g. `onnxruntime` or `openvino-int8`) forces the choice
where measuring every candidate is not wanted (CI, a test suite, a fleet whose machines are known):
only that candidate is built, checked as above and timed, and the decision is not cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from mobilenet import machine
from mobilenet.export import openvino
from mobilenet.export.fold import inference_model
from mobilenet.export.formats import FORMATS
from mobilenet.export.guard import check_min_agreement, describe_shortfall, passes
from mobilenet.export.int8 import quantize
from mobilenet.export.onnx import FP32_TOLERANCE, OnnxRuntimeModel, to_onnx
from mobilenet.files import read_cache, temporary_folder, update_cache
from mobilenet.optional import available

ROUNDS = 3  # interleaved rounds of timed calls
CALLS = 2  # timed calls per candidate and round
CACHE_FILE = "runtime-choices.json"
clock = time.perf_counter  # what the candidates are timed with (tests give their fake candidates a fake clock)
FORCE_VARIABLE = "MOBILENET_RUNTIME"


@dataclass(frozen=True)
class Candidate:
    runtime: str  # pytorch, onnxruntime, openvino
    precision: str = "fp32"  # fp32, bf16, int8

    @property
    def name(self) -> str:
        return self.runtime if self.precision == "fp32" else f"{self.runtime}-{self.precision}"


@dataclass
class Decision:
    """What `choose` measured and picked."""

    chosen: str
    median_ms: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # candidate: why it was not considered
    cached: bool = False
    forced: bool = False  # by $MOBILENET_RUNTIME, not measured

    def describe(self) -> str:
        if self.forced:
            agreement = self.agreement.get(self.chosen)
            return (f"runtime {self.chosen}: forced by ${FORCE_VARIABLE}, {self.median_ms[self.chosen]:.2f} ms a batch"
                    + (f", top-1 agreement with fp32 {100 * agreement:.1f}%" if agreement is not None else ""))
        others = ", ".join(f"{name} {ms:.2f} ms" for name, ms in sorted(self.median_ms.items(), key=lambda x: x[1])
                           if name != self.chosen)
        why = f"fastest measured here: {self.median_ms[self.chosen]:.2f} ms a batch" + (f" (then {others})" if others else "")
        if self.chosen in self.agreement:
            why += f", top-1 agreement with fp32 {100 * self.agreement[self.chosen]:.1f}%"
        return f"runtime {self.chosen}: {why}{' [decided earlier, cached]' if self.cached else ''}"


def candidates(with_data: bool, bf16: bool) -> list[Candidate]:
    """Every runtime and precision installed here (reduced precisions only `with_data`)."""
    found = [Candidate("pytorch")]
    if available("onnx") and available("onnxruntime"):
        found.append(Candidate("onnxruntime"))
        if with_data:
            found.append(Candidate("onnxruntime", "int8"))
    if available("onnx") and available("openvino"):
        found.append(Candidate("openvino"))
        if with_data and bf16:
            found.append(Candidate("openvino", "bf16"))
        if with_data and available("onnxruntime"):  # ONNX Runtime's quantizer writes the INT8 file
            found.append(Candidate("openvino", "int8"))
    return found


def _bf16() -> bool:
    if not available("openvino"):
        return False
    return "BF16" in openvino.capabilities()


def build(candidate: Candidate, model: nn.Module, resolution: int, workdir: Path,
          calibration: torch.Tensor | None, threads: int | None) -> nn.Module:
    """The candidate as a module (float images in, logits out)."""
    if candidate.runtime == "pytorch":
        return inference_model(model)
    return OnnxRuntimeModel(onnx_session(candidate, model, resolution, workdir, calibration, threads))


def onnx_session(candidate: Candidate, model: nn.Module, resolution: int, workdir: Path,
                 calibration: torch.Tensor | None, threads: int | None):
    """The session of an ONNX Runtime or OpenVINO candidate (ONNX Runtime's interface): the fused
    model's ONNX export in `workdir` (made once and reused), quantized to INT8 on `calibration` for
    an INT8 candidate, opened by its format's session (`mobilenet.export.formats`)."""
    path = workdir / "fp32.onnx"
    if not path.exists():
        to_onnx(inference_model(model, channels_last=False), path, resolution)
    if candidate.precision == "int8":
        int8 = workdir / "int8.onnx"
        if not int8.exists():
            quantize(path, int8, calibration)
        path = int8
    if candidate.runtime == "onnxruntime":
        return FORMATS["onnx"].open(path, threads)
    return FORMATS["openvino"].open(path, threads, precision="bf16" if candidate.precision == "bf16" else "f32")


def time_candidates(runners: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median milliseconds of each runner, its calls spread over interleaved rounds."""
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for name, run in runners.items():
        run()  # warm-up (first-call allocations, lazy compilation)
    for _ in range(ROUNDS):
        for name, run in runners.items():
            for _ in range(CALLS):
                start = clock()
                run()
                seconds[name].append(clock() - start)
    return {name: 1000 * statistics.median(values) for name, values in seconds.items()}


def cache_key(model_id: str, batch: int, resolution: int, names: list[str], min_agreement: float) -> str:
    """What a decision depends on: the model, this CPU, the runtimes' versions, the call's shape and
    the agreement required."""
    versions = {name: _version(name) for name in ("torch", "onnxruntime", "openvino")}
    text = json.dumps([model_id, machine.cpu_name(), sorted(machine.cpu_flags()), versions, batch, resolution,
                       sorted(names), min_agreement])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _table(value, kind) -> bool:
    """Whether `value` is a JSON object of names to values of `kind` (numbers, not booleans)."""
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, kind) and not isinstance(v, bool)
                                           for k, v in value.items())


def stored_decision(stored, names: list[str], min_agreement: float) -> tuple[Decision | None, str | None]:
    """A cached decision if it is well formed, names a candidate of this call and still passes the
    guard; else None and why it was not used."""
    if not isinstance(stored, dict) or set(stored) != {"chosen", "median_ms", "agreement", "refused"} or not (
            isinstance(stored["chosen"], str) and _table(stored["median_ms"], (int, float))
            and _table(stored["agreement"], (int, float)) and _table(stored["refused"], str)):
        return None, "the cached decision is malformed"
    decision = Decision(**stored, cached=True)
    if decision.chosen not in names or decision.chosen not in decision.median_ms:
        return None, f"the cached choice {decision.chosen!r} is not a candidate here"
    if "-" in decision.chosen:  # bf16 or INT8: its agreement must pass the guard of today
        agreement = decision.agreement.get(decision.chosen)
        if agreement is None or not passes(agreement, min_agreement):
            figure = "none recorded" if agreement is None else f"{100 * agreement:.2f}%"
            return None, (f"the cached choice {decision.chosen} does not pass the guard (top-1 agreement "
                          f"{figure}, {100 * min_agreement:.2f}% required)")
    return decision, None


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def choose(model: nn.Module, resolution: int, batch: int, *, images: torch.Tensor | None = None,
           calibration: torch.Tensor | None = None, model_id: str | None = None, cache: Path | None = None,
           threads: int | None = None, min_agreement: float | None = None) -> tuple[nn.Module, Decision]:
    """The fastest verified candidate for `model` at `batch` x C x `resolution`^2, and the decision.

    `images` (normalised, of the model's own data) allow bf16 and INT8 candidates, judged by their
    top-1 agreement with fp32 on them; `calibration` (training images) calibrates INT8 (default:
    `images`). `model_id` (e.g. the checkpoint file's digest) and `cache` (a JSON file) let a
    decision made once be reused; `min_agreement` is the guard's threshold (default
    `guard.MIN_AGREEMENT`). A cached decision that cannot be used is measured again, with a note on stderr.
    `$MOBILENET_RUNTIME` names the candidate instead of measuring them all (ValueError if it is not one
    here or fails its check). ValueError too if every candidate fails its check.
    """

    model = model.eval()
    min_agreement = check_min_agreement(min_agreement)
    found = candidates(images is not None, _bf16() if images is not None else False)
    names = [c.name for c in found]
    forced = os.environ.get(FORCE_VARIABLE)
    if forced and forced not in names:
        raise ValueError(f"${FORCE_VARIABLE}={forced!r} is not a candidate here; choose from: {', '.join(names)}")
    key = cache_key(model_id, batch, resolution, names, min_agreement) if model_id and cache and not forced else None
    note = lambda line: print(line, file=sys.stderr)  # noqa: E731
    entries = read_cache(cache, say=note) if key else {}
    decision, why = stored_decision(entries[key], names, min_agreement) if key in entries else (None, None)
    if why:
        note(f"note: {why} ({cache}); measuring again")
    by_name = {c.name: c for c in found}
    with temporary_folder("auto") as work:
        if decision is not None:
            return build(by_name[decision.chosen], model, resolution, work,
                         calibration if calibration is not None else images, threads), decision
        decision = Decision(chosen=forced or "pytorch", forced=bool(forced))
        inputs = torch.randn(model.config.input_shape(batch, resolution),
                             generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            expected = model(inputs).float()
            reference_top1 = model(images).argmax(1) if images is not None else None
        built: dict[str, nn.Module] = {}
        for candidate in [by_name[forced]] if forced else found:
            try:
                runner = build(candidate, model, resolution, work, calibration if calibration is not None
                               else images, threads)
                with torch.inference_mode():
                    if candidate.precision == "fp32":
                        diff = (runner(inputs).float() - expected).abs().max().item()
                        if not diff <= FP32_TOLERANCE:
                            decision.refused[candidate.name] = f"max |logit difference| {diff:.1e} > {FP32_TOLERANCE:g}"
                            continue
                    else:
                        agreement = (runner(images).argmax(1) == reference_top1).float().mean().item()
                        decision.agreement[candidate.name] = agreement
                        if not passes(agreement, min_agreement):
                            decision.refused[candidate.name] = describe_shortfall(agreement, len(images),
                                                                                  min_agreement)
                            continue
            except (ValueError, RuntimeError, OSError) as error:  # a runtime that fails to build here
                decision.refused[candidate.name] = str(error).splitlines()[0][:120]
                continue
            built[candidate.name] = runner
        if forced and forced in decision.refused:
            raise ValueError(f"${FORCE_VARIABLE}={forced}: {decision.refused[forced]}")
        if not built:  # e.g. a model so ill-conditioned that float32 itself strays that far on random inputs
            raise ValueError("no runtime passed its check (" + "; ".join(f"{k}: {v}" for k, v in decision.refused.items())
                             + "): choose one with --runtime")
        with torch.inference_mode():
            decision.median_ms = time_candidates({name: (lambda m=m: m(inputs)) for name, m in built.items()})
        decision.chosen = min(decision.median_ms, key=decision.median_ms.get)  # a forced one: the only one
        if key:
            update_cache(cache, key, {k: v for k, v in asdict(decision).items() if k not in ("cached", "forced")})
        return built[decision.chosen], decision


__all__ = ["CACHE_FILE", "FORCE_VARIABLE", "Candidate", "Decision", "build", "candidates", "choose", "onnx_session",
           "time_candidates"]
