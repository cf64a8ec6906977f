"""How this machine runs the training step: which of `mobilenet.fused`'s kernels, and whether bfloat16
autocast (`--amp auto`), each only where a short probe shows it faster here.

Whether bf16 pays on a CPU depends on the CPU (AMX and AVX-512 BF16 run it natively, others
emulate it and run slower) and on the model; so does each kernel's gain (the depthwise kernel beats
oneDNN in bf16 everywhere measured, but roughly ties it in fp32 on some models), and bf16's gain
depends on the kernels (without the depthwise kernel, oneDNN's slow bf16 depthwise gradients make
bf16 lose). So nothing is assumed: for each precision the probe adds the kernels one at a time
(`KERNELS` order), keeping each that makes the step (forward, loss, backward) of a copy of the model
at the run's batch shape at least as fast, interleaved against the step without it; then the best
fp32 step is timed against the best bf16 step, and bf16 is chosen only if it is at least `MIN_GAIN`
faster. CUDA keeps bf16 on and PyTorch's own modules.

The probes run on copies with the global random generators forked, so the run itself is exactly
what it would be without them. The decision is cached per (CPU, torch version, kernels' version,
model, batch shape, layout, settings) in `<data root>/amp-choices.json`, so a second run of the same
command on the same machine decides the same way (and repeats bit for bit), and a resumed run keeps
the decision it recorded.
"""

from __future__ import annotations

import copy
import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mobilenet.files import read_cache, update_cache

CACHE_FILE = "amp-choices.json"
MIN_GAIN = 1.05  # bf16 must make the step at least this much faster
STEPS = 3  # timed steps of each, interleaved, after one untimed


@dataclass(frozen=True)
class StepChoice:
    kernels: tuple[str, ...]  # mobilenet.fused.KERNELS swapped in, in order
    bf16: bool
    why: str  # "asked (--amp on)", "probe: the bf16 step ran 1.80x as fast as fp32's ...", ...
    speedup: float | None = None  # the best fp32 step's time / the best bf16 step's, when probed
    probes: dict | None = None  # each kernel's probe: "fp32 +depthwise": step time without / with

    def to_metrics(self) -> dict:
        return {"kernels": list(self.kernels), "amp": "bf16" if self.bf16 else "fp32", "amp_probe": self.speedup,
                "step_probes": self.probes}


def step_speedup(baseline: nn.Module, candidate: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 criterion: nn.Module, bf16: tuple[bool, bool] = (False, False)) -> float:
    """The training step (forward, loss, backward) of a copy of `baseline` timed against one of
    `candidate`, each with or without bf16 autocast as `bf16` says, interleaved, on this batch:
    baseline's median time over candidate's (above 1: the candidate is faster). The global random
    generators are forked, so the run that asks is exactly what it would be without asking."""
    device = images.device.type
    with torch.random.fork_rng(devices=[]):
        trials = [copy.deepcopy(baseline).train(), copy.deepcopy(candidate).train()]

        def step(which: int) -> float:
            start = time.perf_counter()
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16[which]):
                loss = criterion(trials[which](images).float(), labels)
            trials[which].zero_grad(set_to_none=True)
            loss.backward()
            return time.perf_counter() - start

        step(0), step(1)
        times: list[list[float]] = [[], []]
        for _ in range(STEPS):
            for which in (0, 1):
                times[which].append(step(which))
    return statistics.median(times[0]) / statistics.median(times[1])


def with_kernels(model: nn.Module, kernels: tuple[str, ...]) -> nn.Module:
    """A copy of `model` with these of `mobilenet.fused.KERNELS` swapped in."""
    from mobilenet.fused import fuse

    copied = copy.deepcopy(model)
    fuse(copied, kernels)
    return copied


def probe(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, criterion: nn.Module,
          bf16: bool, kernels: tuple[str, ...]) -> tuple[tuple[str, ...], dict]:
    """The kernels worth having at this precision, added one at a time in `kernels`' order, each kept if
    the step with it is at least as fast as without; and each probe's ratio, by name."""
    chosen: tuple[str, ...] = ()
    ratios = {}
    for kernel in kernels:
        ratio = step_speedup(with_kernels(model, chosen), with_kernels(model, chosen + (kernel,)), images, labels,
                             criterion, (bf16, bf16))
        ratios[f"{'bf16' if bf16 else 'fp32'} +{kernel}"] = ratio
        if ratio >= 1.0:
            chosen += (kernel,)
    return chosen, ratios


def choose_step(amp: str, fused: bool, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                criterion: nn.Module, cache: Path | None = None) -> StepChoice:
    """The step for `amp` ("on", "off" or "auto") and `fused` (whether `mobilenet.fused`'s kernels may
    be used) on this batch shape: asked, cached, or probed now (and cached)."""
    from mobilenet.fused import KERNELS, available

    device = images.device.type
    if device != "cpu":  # the kernels are the CPU's; on CUDA autocast pays, elsewhere only if asked
        on = amp == "on" or (amp == "auto" and device == "cuda")
        return StepChoice((), on, f"asked (--amp {amp})" if amp != "auto" else device)
    candidates = tuple(KERNELS if available() else ("pointwise",)) if fused else ()  # pointwise needs no C
    precisions = {"on": (True,), "off": (False,), "auto": (False, True)}[amp]
    if not candidates and len(precisions) == 1:
        return StepChoice((), precisions[0], f"asked (--amp {amp})")
    key = f"step:{amp}:{','.join(candidates)}:" + cache_key(model, images)
    stored = read_cache(cache).get(key) if cache else None
    if (isinstance(stored, dict) and isinstance(stored.get("kernels"), list)
            and set(stored["kernels"]) <= set(candidates)
            and isinstance(stored.get("bf16"), bool) and isinstance(stored.get("why"), str)):
        return StepChoice(tuple(stored["kernels"]), stored["bf16"], stored["why"], stored.get("speedup"),
                          stored.get("probes"))
    best, probes = {}, {}
    for bf16 in precisions:
        best[bf16], ratios = probe(model, images, labels, criterion, bf16, candidates)
        probes.update(ratios)
    if len(precisions) == 1:
        bf16, speedup, why = precisions[0], None, f"asked (--amp {amp})"
    else:
        speedup = step_speedup(with_kernels(model, best[False]), with_kernels(model, best[True]), images, labels,
                               criterion, (False, True))
        bf16 = speedup >= MIN_GAIN
        why = (f"probe: the bf16 step ran {speedup:.2f}x as fast as fp32's ({'on' if bf16 else 'off'}: "
               f"it needs {MIN_GAIN:.2f}x)")
    choice = StepChoice(best[bf16], bf16, why, speedup, probes)
    if cache:
        update_cache(cache, key, {"kernels": list(choice.kernels), "bf16": bf16, "why": why, "speedup": speedup,
                                  "probes": probes})
    return choice


def cache_key(model: nn.Module, images: torch.Tensor) -> str:
    from mobilenet.bench.machine import cpu_flags, cpu_name
    from mobilenet.fused import version

    config = model.config.to_dict() if hasattr(model, "config") else type(model).__name__
    layout = "channels_last" if images.is_contiguous(memory_format=torch.channels_last) else "nchw"
    modules = sorted({type(m).__name__ for m in model.modules()})
    text = json.dumps([cpu_name(), cpu_flags(), torch.__version__, torch.get_num_threads(), config, modules,
                       list(images.shape), layout, version()])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


__all__ = ["CACHE_FILE", "MIN_GAIN", "StepChoice", "choose_step", "probe", "step_speedup", "with_kernels"]
