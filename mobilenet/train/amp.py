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

A precision the CPU can only emulate is not probed kernel by kernel: before bf16's probes, one step
with every kernel at bf16 is timed against the best fp32 step, on a quarter of the batch (emulated,
a full batch's bf16 step takes seconds), and bf16 is dropped there if it runs at less than
1/`HOPELESS` of fp32's speed (bf16 emulated on AVX2 runs about 0.1x). The probes say
what they are doing as they go (`report`), and `$MOBILENET_STEP` forces a choice without probing
(`fp32` or `bf16`, then `:` and the kernels, e.g. `fp32:bn_act,depthwise,pointwise`), where a
benchmark or a test wants a fixed step; asked settings (`--amp on|off`, `--no-fused-bn`) still win.

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
import os
import sys
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mobilenet.files import read_cache, update_cache
from mobilenet.fused import KERNELS, available, fuse, version
from mobilenet.machine import cpu_flags, cpu_name

CACHE_FILE = "amp-choices.json"
MIN_GAIN = 1.05  # bf16 must make the step at least this much faster
STEPS = 3  # timed steps of each, interleaved, after one untimed
HOPELESS = 2.0  # bf16 whose step (every kernel) takes this many times fp32's best is not probed further
GLANCE_SHARE = 4  # that first look at bf16 times steps on this fraction of the batch
FORCE_VARIABLE = "MOBILENET_STEP"


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
                 criterion: nn.Module, bf16: tuple[bool, bool] = (False, False), steps: int = STEPS) -> float:
    """The training step (forward, loss, backward) of a copy of `baseline` timed against one of
    `candidate`, each with or without bf16 autocast as `bf16` says, interleaved, on this batch:
    baseline's median time over candidate's (above 1: the candidate is faster), over `steps` timed
    steps of each after one untimed. The global random generators are forked, so the run that asks is
    exactly what it would be without asking."""
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
        for _ in range(steps):
            for which in (0, 1):
                times[which].append(step(which))
    return statistics.median(times[0]) / statistics.median(times[1])


def with_kernels(model: nn.Module, kernels: tuple[str, ...]) -> nn.Module:
    """A copy of `model` with these of `mobilenet.fused.KERNELS` swapped in."""
    copied = copy.deepcopy(model)
    fuse(copied, kernels)
    return copied


def probe(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, criterion: nn.Module,
          bf16: bool, kernels: tuple[str, ...], report: Callable[[str], None] = lambda name: None
          ) -> tuple[tuple[str, ...], dict]:
    """The kernels worth having at this precision, added one at a time in `kernels`' order, each kept if
    the step with it is at least as fast as without; and each probe's ratio, by name (`report` is told
    each name before its probe runs)."""
    chosen: tuple[str, ...] = ()
    ratios = {}
    for kernel in kernels:
        name = f"{'bf16' if bf16 else 'fp32'} +{kernel}"
        baseline = with_kernels(model, chosen)
        candidate = copy.deepcopy(baseline)
        if KERNELS[kernel](candidate) == 0:  # e.g. bn_depthwise without the two kernels it pairs
            report(f"{name}: nothing to swap")
            continue
        report(name)
        ratio = step_speedup(baseline, candidate, images, labels, criterion, (bf16, bf16))
        ratios[name] = ratio
        if ratio >= 1.0:
            chosen += (kernel,)
    return chosen, ratios


def forced_step(value: str, kernels: tuple[str, ...]) -> tuple[bool, tuple[str, ...]]:
    """`$MOBILENET_STEP` read: whether bf16, and the kernels it names; ValueError if malformed."""
    precision, _, names = value.partition(":")
    chosen = tuple(name for name in names.split(",") if name)
    if precision not in ("fp32", "bf16") or not set(chosen) <= set(kernels):
        raise ValueError(f"${FORCE_VARIABLE}={value!r}: expected fp32 or bf16, then optionally ':' and some of "
                         f"{','.join(kernels)}")
    return precision == "bf16", chosen


def choose_step(amp: str, fused: bool, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                criterion: nn.Module, cache: Path | None = None,
                report: Callable[[str], None] | None = None) -> StepChoice:
    """The step for `amp` ("on", "off" or "auto") and `fused` (whether `mobilenet.fused`'s kernels may
    be used) on this batch shape: asked, forced ($MOBILENET_STEP), cached, or probed now (and cached).
    `report`, if given, is told what each probe is about to measure ("3 of 8: fp32 +pointwise")."""
    device = images.device.type
    if device != "cpu":  # the kernels are the CPU's; on CUDA autocast pays, elsewhere only if asked
        on = amp == "on" or (amp == "auto" and device == "cuda")
        return StepChoice((), on, f"asked (--amp {amp})" if amp != "auto" else device)
    candidates = tuple(KERNELS if available() else ("pointwise",)) if fused else ()  # pointwise needs no C
    precisions = {"on": (True,), "off": (False,), "auto": (False, True)}[amp]
    if os.environ.get(FORCE_VARIABLE):
        bf16, kernels = forced_step(os.environ[FORCE_VARIABLE], tuple(KERNELS))
        bf16 = bf16 if amp == "auto" else precisions[0]
        return StepChoice(tuple(k for k in kernels if k in candidates), bf16, f"forced by ${FORCE_VARIABLE}")
    if not candidates and len(precisions) == 1:
        return StepChoice((), precisions[0], f"asked (--amp {amp})")
    key = f"step:{amp}:{','.join(candidates)}:" + cache_key(model, images)
    note = lambda line: print(line, file=sys.stderr)  # noqa: E731
    entries = read_cache(cache, say=note) if cache else {}
    if key in entries:
        stored = stored_choice(entries[key], candidates)
        if stored is not None:
            return stored
        note(f"note: the cached step decision in {cache} is malformed; probing again")
    total = len(candidates) * len(precisions) + (2 if len(precisions) == 2 else 0)
    done = 0

    def tell(name: str) -> None:
        nonlocal done
        done += 1
        if report:
            report(f"{done} of {total}: {name}")

    probes: dict = {}

    def probed(bf16: bool) -> tuple[str, ...]:
        kernels, ratios = probe(model, images, labels, criterion, bf16, candidates, tell)
        probes.update(ratios)
        return kernels

    if amp != "auto":
        choice = StepChoice(probed(precisions[0]), precisions[0], f"asked (--amp {amp})", None, probes)
    else:
        fp32 = probed(False)
        tell("bf16 at a glance")  # one step each: is bf16 worth probing on this CPU at all?
        few = slice(0, max(1, len(images) // GLANCE_SHARE))  # an emulated bf16 step takes seconds at a full batch
        glance = step_speedup(with_kernels(model, fp32), with_kernels(model, candidates), images[few], labels[few],
                              criterion, (False, True), steps=1)
        probes["bf16 at a glance"] = glance
        if glance < 1 / HOPELESS:
            why = (f"probe: one bf16 step ran {glance:.2f}x as fast as fp32's (emulated on this CPU?), "
                   f"below 1/{HOPELESS:g}: not probed further")
            choice = StepChoice(fp32, False, why, glance, probes)
        else:
            bf16 = probed(True)
            tell("fp32 against bf16")
            speedup = step_speedup(with_kernels(model, fp32), with_kernels(model, bf16), images, labels, criterion,
                                   (False, True))
            on = speedup >= MIN_GAIN
            why = (f"probe: the bf16 step ran {speedup:.2f}x as fast as fp32's ({'on' if on else 'off'}: "
                   f"it needs {MIN_GAIN:.2f}x)")
            choice = StepChoice(bf16 if on else fp32, on, why, speedup, probes)
    if cache:
        update_cache(cache, key, {"kernels": list(choice.kernels), "bf16": choice.bf16, "why": choice.why,
                                  "speedup": choice.speedup, "probes": probes})
    return choice


def stored_choice(stored, candidates: tuple[str, ...]) -> StepChoice | None:
    """A cached decision if it is well formed (the fields `choose_step` writes, of their types, its
    kernels among this machine's `candidates`); None otherwise, to be probed again."""
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not (isinstance(stored, dict) and isinstance(stored.get("kernels"), list)
            and all(isinstance(k, str) for k in stored["kernels"]) and set(stored["kernels"]) <= set(candidates)
            and isinstance(stored.get("bf16"), bool) and isinstance(stored.get("why"), str)
            and (stored.get("speedup") is None or number(stored["speedup"]))
            and (stored.get("probes") is None or isinstance(stored["probes"], dict)
                 and all(isinstance(k, str) and number(v) for k, v in stored["probes"].items()))):
        return None
    return StepChoice(tuple(stored["kernels"]), stored["bf16"], stored["why"], stored.get("speedup"),
                      stored.get("probes"))


def cache_key(model: nn.Module, images: torch.Tensor) -> str:
    config = model.config.to_dict() if hasattr(model, "config") else type(model).__name__
    layout = "channels_last" if images.is_contiguous(memory_format=torch.channels_last) else "nchw"
    modules = sorted({type(m).__name__ for m in model.modules()})
    text = json.dumps([cpu_name(), cpu_flags(), torch.__version__, torch.get_num_threads(), config, modules,
                       list(images.shape), layout, version()])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


__all__ = ["CACHE_FILE", "FORCE_VARIABLE", "HOPELESS", "MIN_GAIN", "StepChoice", "choose_step", "forced_step", "probe",
           "step_speedup", "stored_choice", "with_kernels"]
