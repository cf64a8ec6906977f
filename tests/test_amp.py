"""The training step's choices (`mobilenet.train.amp`): which kernels and whether bf16 autocast, each
decided by a probe of the step, cached, recorded, kept on resume."""

import json

import pytest
import torch
from runs import tiny
from torch import nn

from mobilenet import create_model
from mobilenet.fused import (BatchNormAct2d, DeferredBatchNormAct2d, DepthwiseConv2d, NormedDepthwiseConv2d,
                             PointwiseConv2d, available)
from mobilenet.train import amp, train

KERNELS_OF = {BatchNormAct2d: {"bn_act"}, DepthwiseConv2d: {"depthwise"}, PointwiseConv2d: {"pointwise"},
              DeferredBatchNormAct2d: {"bn_act", "bn_depthwise"}, NormedDepthwiseConv2d: {"depthwise", "bn_depthwise"}}


@pytest.fixture(autouse=True)
def probed(monkeypatch):
    """These tests are about the probes: the step the other tests force (conftest.py) is not forced here."""
    monkeypatch.delenv(amp.FORCE_VARIABLE, raising=False)


def batch(n=8, side=16):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, side, side, generator=g).contiguous(memory_format=torch.channels_last)
    return images, torch.randint(0, 3, (n,), generator=g)


def kernels_in(model: nn.Module) -> set[str]:
    return set().union(*(KERNELS_OF[type(m)] for m in model.modules() if type(m) in KERNELS_OF))


class FakeMachine:
    """step_speedup as a machine would answer it: each kernel's gain per precision, and bf16's gain
    over fp32 for the whole step; records what was asked."""

    def __init__(self, gains: dict[tuple[str, bool], float], bf16_gain: float):
        self.gains, self.bf16_gain, self.calls = gains, bf16_gain, []

    def __call__(self, baseline, candidate, images, labels, criterion, bf16=(False, False), steps=amp.STEPS):
        if bf16[0] != bf16[1]:
            self.calls.append(("bf16", tuple(sorted(kernels_in(candidate)))))
            return self.bf16_gain
        (added,) = kernels_in(candidate) - kernels_in(baseline)
        self.calls.append((added, bf16[0]))
        return self.gains[added, bf16[0]]


@pytest.fixture
def machine(monkeypatch):
    if not available():
        pytest.skip("no C compiler: only the pointwise swap is probed")
    fake = FakeMachine({("bn_act", False): 1.3, ("depthwise", False): 0.95, ("pointwise", False): 1.1,
                        ("bn_act", True): 1.4, ("depthwise", True): 1.6, ("pointwise", True): 1.2,
                        ("bn_depthwise", False): 1.05, ("bn_depthwise", True): 1.1}, bf16_gain=1.8)
    monkeypatch.setattr(amp, "step_speedup", fake)
    return fake


def test_the_probes_leave_the_model_and_the_generators_alone(tmp_path):
    model = create_model("mobilenet_v2", width_mult=0.25, num_classes=3, small_input=True).train()
    model = model.to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    choice = amp.choose_step("auto", True, model, *batch(), nn.CrossEntropyLoss(), cache=tmp_path / "cache.json")
    assert choice.speedup > 0 and torch.equal(torch.get_rng_state(), rng)  # V2's dropout draws inside the probe
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics too
    assert not kernels_in(model)  # the probes swapped kernels into copies
    assert all(p.grad is None for p in model.parameters())


def test_each_precision_keeps_the_kernels_that_pay_then_bf16_against_fp32(machine, tmp_path):
    model, criterion = create_model("mobilenet_v1", width_mult=0.25, num_classes=3), nn.CrossEntropyLoss()
    choice = amp.choose_step("auto", True, model, *batch(), criterion, cache=tmp_path / "c.json")
    # fp32 drops the depthwise kernel (0.95x), so bn_depthwise has nothing to pair and is not timed; bf16
    # keeps all four; then bf16's best beats fp32's best
    everything = ("bn_act", "bn_depthwise", "depthwise", "pointwise")  # (sorted)
    assert machine.calls == [("bn_act", False), ("depthwise", False), ("pointwise", False),
                             ("bf16", everything),  # at a glance: fp32's best against bf16 with every kernel
                             ("bn_act", True), ("depthwise", True), ("pointwise", True), ("bn_depthwise", True),
                             ("bf16", everything)]
    assert choice.bf16 and choice.kernels == ("bn_act", "depthwise", "pointwise", "bn_depthwise")
    assert choice.speedup == 1.8 and "fp32 +bn_depthwise" not in choice.probes
    assert choice.probes["fp32 +depthwise"] == 0.95 and "1.80x" in choice.why
    machine.bf16_gain = 1.02  # below MIN_GAIN: fp32, with fp32's own kernels
    slower = amp.choose_step("auto", True, model, *batch(), criterion, cache=tmp_path / "other.json")
    assert not slower.bf16 and slower.kernels == ("bn_act", "pointwise")


def test_a_precision_the_cpu_emulates_is_not_probed_kernel_by_kernel(machine, tmp_path):
    """bf16 emulated (AVX2: one step about 0.1x as fast as fp32's): after fp32's probes, one bf16 step
    settles it; the first run says what each probe measures as it goes."""
    machine.bf16_gain = 0.3
    told = []
    model = create_model("mobilenet_v1", width_mult=0.25, num_classes=3)
    choice = amp.choose_step("auto", True, model, *batch(), nn.CrossEntropyLoss(), cache=tmp_path / "c.json",
                             report=told.append)
    assert machine.calls == [("bn_act", False), ("depthwise", False), ("pointwise", False),
                             ("bf16", ("bn_act", "bn_depthwise", "depthwise", "pointwise"))]
    assert not choice.bf16 and choice.kernels == ("bn_act", "pointwise") and "not probed further" in choice.why
    assert told == ["1 of 10: fp32 +bn_act", "2 of 10: fp32 +depthwise", "3 of 10: fp32 +pointwise",
                    "4 of 10: fp32 +bn_depthwise: nothing to swap", "5 of 10: bf16 at a glance"]
    machine.bf16_gain, told[:] = 1.8, []  # natively: the whole count
    amp.choose_step("auto", True, model, *batch(n=4), nn.CrossEntropyLoss(), cache=tmp_path / "c.json",
                    report=told.append)
    assert told[5:] == ["6 of 10: bf16 +bn_act", "7 of 10: bf16 +depthwise", "8 of 10: bf16 +pointwise",
                        "9 of 10: bf16 +bn_depthwise", "10 of 10: fp32 against bf16"]


def test_a_forced_step_is_not_probed_and_asked_settings_still_win(machine, monkeypatch, tmp_path):
    model, criterion = create_model("mobilenet_v1", width_mult=0.25, num_classes=3), nn.CrossEntropyLoss()
    monkeypatch.setenv(amp.FORCE_VARIABLE, "bf16:depthwise,pointwise")
    forced = amp.choose_step("auto", True, model, *batch(), criterion, cache=tmp_path / "c.json")
    assert forced.bf16 and forced.kernels == ("depthwise", "pointwise") and "MOBILENET_STEP" in forced.why
    assert not amp.choose_step("off", True, model, *batch(), criterion).bf16  # --amp off
    assert amp.choose_step("auto", False, model, *batch(), criterion).kernels == ()  # --no-fused-bn
    assert machine.calls == [] and not (tmp_path / "c.json").exists()
    for wrong in ("fp16", "fp32:bn_act,winograd"):
        monkeypatch.setenv(amp.FORCE_VARIABLE, wrong)
        with pytest.raises(ValueError, match="MOBILENET_STEP"):
            amp.choose_step("auto", True, model, *batch(), criterion)


def test_decisions_are_cached_per_batch_shape_and_setting(machine, tmp_path):
    model, criterion, cache = create_model("mobilenet_v1", width_mult=0.25, num_classes=3), nn.CrossEntropyLoss(), \
        tmp_path / "c.json"
    first = amp.choose_step("auto", True, model, *batch(), criterion, cache=cache)
    machine.bf16_gain = 0.5  # the machine changed its mind, but the cache holds the decision
    assert amp.choose_step("auto", True, model, *batch(), criterion, cache=cache) == first
    assert len(machine.calls) == 9  # fp32: three (bn_depthwise has nothing to pair); at a glance; bf16: four; one
    assert not amp.choose_step("auto", True, model, *batch(n=4), criterion, cache=cache).bf16  # probed anew
    off = amp.choose_step("off", True, model, *batch(), criterion, cache=cache)  # fp32's kernels only
    assert not off.bf16 and off.kernels == ("bn_act", "pointwise") and machine.calls[-1] == ("pointwise", False)
    calls = len(machine.calls)
    for setting, expected in (("on", True), ("off", False)):  # asked, no kernels allowed: never probed
        asked = amp.choose_step(setting, False, model, *batch(), criterion, cache=cache)
        assert asked.bf16 is expected and asked.kernels == ()
    assert len(machine.calls) == calls


def test_a_malformed_cached_step_decision_is_probed_again(machine, tmp_path, capsys):
    """amp-choices.json is ours: an entry of the wrong shape is probed again with one line, never a traceback."""
    model, criterion, cache = create_model("mobilenet_v1", width_mult=0.25, num_classes=3), nn.CrossEntropyLoss(), \
        tmp_path / "c.json"
    first = amp.choose_step("auto", True, model, *batch(), criterion, cache=cache)
    (key,) = json.loads(cache.read_text())
    for entry in (None, ["bn_act"], "fp32", {"kernels": [["bn_act"]], "bf16": False, "why": "x"},
                  {"kernels": [], "bf16": False, "why": "x", "speedup": "fast"},
                  {"kernels": [], "bf16": False, "why": "x", "probes": ["a"]}):
        cache.write_text(json.dumps({key: entry}))
        capsys.readouterr()
        calls = len(machine.calls)
        again = amp.choose_step("auto", True, model, *batch(), criterion, cache=cache)
        notes = capsys.readouterr().err.strip().splitlines()
        assert again == first and len(machine.calls) == calls + 9, entry  # probed again
        assert len(notes) == 1 and "malformed" in notes[0], (entry, notes)
    cache.write_text("[1, 2]")  # the whole file: not an object
    assert amp.choose_step("auto", True, model, *batch(), criterion, cache=cache) == first
    assert "ignoring it" in capsys.readouterr().err


def test_a_run_records_the_decision_and_a_resume_keeps_it(machine, monkeypatch, tmp_path):
    monkeypatch.setenv("MOBILENET_DATA", str(tmp_path / "data"))  # its own cache
    train(tiny(tmp_path / "run"), stop_after=1)
    machine.bf16_gain, machine.gains = 0.5, {key: 0.5 for key in machine.gains}  # would now choose nothing
    monkeypatch.setattr(amp, "read_cache", lambda path, say=None: {})  # no cache either: only the run's own record
    train(tiny(tmp_path / "run"), resume=True)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["amp"], m["amp_probe"], m["kernels"]) for m in metrics] == [
        ("bf16", 1.8, ["bn_act", "depthwise", "pointwise", "bn_depthwise"])] * 2
    assert all(m["fused_modules"] > 20 and m["step_probes"]["bf16 +depthwise"] == 1.6 for m in metrics)
    slower = train(tiny(tmp_path / "slower"))  # probed anew on the slower machine: nothing pays
    assert slower["kernels"] == [] and slower["amp"] == "fp32" and slower["fused_modules"] == 0
    asked = train(tiny(tmp_path / "unfused", fused_bn=False, amp="off"))
    assert asked["kernels"] == [] and asked["fused_modules"] == 0 and asked["amp_probe"] is None


def test_a_run_from_before_the_kernel_choice_resumes_with_its_fused_batchnorm(tmp_path, machine):
    """Runs recorded `fused_bn` (how many BatchNorms were fused) before kernels were chosen one by one:
    they resume with BatchNorm fused and nothing else, as they trained."""
    train(tiny(tmp_path / "old"), stop_after=1)
    lines = (tmp_path / "old" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["kernels"]
    from mobilenet.checkpoint import atomic_save, read_safetensors

    state = tmp_path / "old" / "state.safetensors"
    tensors, metadata = read_safetensors(state)
    info = json.loads(metadata["info"])
    for m in info["metrics"]:  # as an older version wrote them
        m.pop("kernels"), m.pop("step_probes"), m.pop("fused_modules")
        m["fused_bn"], m["fused_probe"] = 27, 1.2
    atomic_save(tensors, state, {**metadata, "info": json.dumps(info)})
    resumed = train(tiny(tmp_path / "old"), resume=True)
    assert resumed["kernels"] == ["bn_act"] and resumed["fused_modules"] > 10
