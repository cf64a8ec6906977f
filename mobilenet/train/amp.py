"""`--amp auto`: bfloat16 autocast only where it makes this machine's training step faster (and,
measured the same way, the fused BatchNorm kernel only where it does).

Whether bf16 pays on a CPU depends on the CPU (AMX and AVX-512 BF16 run it natively, others
emulate it and run slower) and on the model (BatchNorm and the loss stay in fp32, so the casts
around them can cost more than the convolutions gain). So nothing is assumed: a short probe times
the training step (forward, loss, backward) of a copy of the model at the run's batch shape, fp32
and bf16 interleaved, and bf16 is chosen only if it is at least `MIN_GAIN` faster. CUDA keeps bf16 on.

The probe runs on a copy with the global random generators forked, so the run itself is exactly
what it would be without it. Its decision is cached per (CPU, torch version, model, batch shape,
layout) in `<data root>/amp-choices.json`, so a second run of the same command on the same machine
decides the same way (and repeats bit for bit), and a resumed run keeps the decision it recorded.
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
class AmpChoice:
    bf16: bool
    why: str  # "asked (--amp on)", "probe: bf16 step 1.08x fp32's", ...
    speedup: float | None = None  # fp32 step time / bf16 step time, when probed

    def to_metrics(self) -> dict:
        return {"amp": "bf16" if self.bf16 else "fp32", "amp_probe": self.speedup}


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


def probe(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, criterion: nn.Module) -> float:
    """fp32 step time over bf16 step time for a copy of `model` on this batch (above 1: bf16 faster)."""
    return step_speedup(model, model, images, labels, criterion, bf16=(False, True))


def probe_fused(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, criterion: nn.Module,
                cache: Path | None = None) -> float:
    """How much faster the step of `model` runs with `mobilenet.fused`'s kernels (fused BatchNorm,
    depthwise backward), in fp32: cached like the bf16 decision, since the kernels' gain depends on the CPU."""
    from mobilenet.fused import fuse

    def measure() -> float:
        fused = copy.deepcopy(model)
        fuse(fused)
        return step_speedup(model, fused, images, labels, criterion)

    return cached_speedup(cache, "fused:" + cache_key(model, images), measure)


def cached_speedup(cache: Path | None, key: str, measure) -> float:
    """The speedup stored under `key` in the decision cache, or `measure()`d now and stored."""
    stored = read_cache(cache).get(key) if cache else None
    if isinstance(stored, dict) and isinstance(stored.get("speedup"), (int, float)):
        return float(stored["speedup"])
    speedup = measure()
    if cache:
        update_cache(cache, key, {"speedup": speedup})
    return speedup


def cache_key(model: nn.Module, images: torch.Tensor) -> str:
    from mobilenet.bench.machine import cpu_flags, cpu_name
    from mobilenet.fused import version

    config = model.config.to_dict() if hasattr(model, "config") else type(model).__name__
    layout = "channels_last" if images.is_contiguous(memory_format=torch.channels_last) else "nchw"
    modules = sorted({type(m).__name__ for m in model.modules()})  # e.g. fused BatchNorm or not
    text = json.dumps([cpu_name(), cpu_flags(), torch.__version__, torch.get_num_threads(), config, modules,
                       list(images.shape), layout, version()])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def choose_amp(setting: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, criterion: nn.Module,
               cache: Path | None = None) -> AmpChoice:
    """The autocast decision for `setting` ("on", "off" or "auto") on this batch shape."""
    if setting == "on":
        return AmpChoice(True, "asked (--amp on)")
    if setting == "off":
        return AmpChoice(False, "asked (--amp off)")
    if images.device.type == "cuda":
        return AmpChoice(True, "CUDA")
    if images.device.type != "cpu":
        return AmpChoice(False, f"no bf16 autocast probe on {images.device.type}")
    speedup = cached_speedup(cache, cache_key(model, images), lambda: probe(model, images, labels, criterion))
    bf16 = speedup >= MIN_GAIN
    return AmpChoice(bf16, f"probe: the bf16 step ran {speedup:.2f}x as fast as fp32's "
                           f"({'on' if bf16 else 'off'}: it needs {MIN_GAIN:.2f}x)", speedup)


__all__ = ["AmpChoice", "CACHE_FILE", "MIN_GAIN", "choose_amp", "probe", "probe_fused", "step_speedup"]
