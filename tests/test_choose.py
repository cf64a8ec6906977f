"""`auto` chooses by measuring: the fastest candidate that passes its check wins, reduced
precisions only with the model's own images and when they pass the one accuracy guard, and the
decision is cached per model, CPU and versions, and used only if it is well formed and still passes."""

import json

import pytest
import torch
from torch import nn

import mobilenet.export.choose as choose
from mobilenet import create_model


@pytest.fixture(autouse=True)
def measured(monkeypatch):
    """These tests are about measuring: the suite's forced runtime (conftest.py) is removed."""
    monkeypatch.delenv(choose.FORCE_VARIABLE, raising=False)


CLOCK = [0.0]  # the fake candidates' time, in seconds: `fake` makes it the one `choose` times them with


class Fake(nn.Module):
    """A candidate that takes `ms` a call on CLOCK (so a busy machine cannot reorder the fakes) and
    returns `logits(x)`."""

    def __init__(self, ms: float, logits) -> None:
        super().__init__()
        self.ms, self.logits = ms, logits

    def forward(self, x):
        CLOCK[0] += self.ms / 1000
        return self.logits(x)


@pytest.fixture
def fake(monkeypatch):
    """Every candidate built by `choose` is a Fake of the given speed and correctness; counts builds."""
    model = create_model("mobilenet_v1", width_mult=0.25, num_classes=4, small_input=True).eval()
    with torch.no_grad():  # distinct logits whatever the random features: a flipped output changes every top-1
        model.classifier.bias.copy_(torch.arange(4.0))
    plans, built = {}, []

    def build(candidate, model_, resolution, workdir, calibration, threads):
        built.append(candidate.name)
        ms, wrong = plans[candidate.name]
        return Fake(ms, (lambda x: model(x).flip(1) + 1) if wrong else model)  # wrong logits, wrong top-1

    monkeypatch.setattr(choose, "build", build)
    monkeypatch.setattr(choose, "clock", lambda: CLOCK[0])
    monkeypatch.setattr(choose, "ROUNDS", 1)  # three timed calls a candidate: its median is enough for a fake
    monkeypatch.setattr(choose, "CALLS", 3)
    monkeypatch.setattr(choose, "_bf16", lambda: True)
    monkeypatch.setattr(choose, "available", lambda name: True)
    return model, plans, built


def test_the_fastest_checked_candidate_wins(fake, tmp_path):
    model, plans, built = fake
    plans.update({"pytorch": (10, False), "onnxruntime": (1, True), "openvino": (5, False)})
    fast, decision = choose.choose(model, 16, 2)  # no images: fp32 candidates only
    assert set(built) == {"pytorch", "onnxruntime", "openvino"}
    assert decision.chosen == "openvino" and "max |logit difference|" in decision.refused["onnxruntime"], decision
    assert decision.median_ms["openvino"] < decision.median_ms["pytorch"]
    assert "runtime openvino: fastest measured here" in decision.describe()


def test_a_forced_runtime_is_the_only_one_built_checked_and_timed_and_is_not_cached(fake, tmp_path, monkeypatch):
    model, plans, built = fake
    plans.update({"pytorch": (1, False), "onnxruntime": (30, False), "openvino": (1, True),
                  "onnxruntime-int8": (1, True), "openvino-int8": (30, False)})
    cache = tmp_path / "choices.json"
    monkeypatch.setenv(choose.FORCE_VARIABLE, "onnxruntime")  # slower than pytorch: forced all the same
    fast, decision = choose.choose(model, 16, 2, model_id="m", cache=cache)
    assert built == ["onnxruntime"] and decision.chosen == "onnxruntime" and fast.ms == 30
    assert list(decision.median_ms) == ["onnxruntime"] and decision.median_ms["onnxruntime"] >= 30
    assert decision.describe().startswith("runtime onnxruntime: forced by $MOBILENET_RUNTIME, 3")
    assert not cache.exists()
    images = torch.randn(8, 3, 16, 16)
    monkeypatch.setenv(choose.FORCE_VARIABLE, "openvino-int8")  # a reduced precision passes the guard first
    _, decision = choose.choose(model, 16, 2, images=images)
    assert decision.agreement == {"openvino-int8": 1.0} and "agreement with fp32 100.0%" in decision.describe()
    for name, why in (("onnxruntime-int8", "top-1 agreement"), ("openvino", "max |logit difference|")):
        monkeypatch.setenv(choose.FORCE_VARIABLE, name)  # a forced runtime that fails its check is refused
        with pytest.raises(ValueError, match=rf"^\$MOBILENET_RUNTIME={name}: {why}"):
            choose.choose(model, 16, 2, images=images)
    monkeypatch.setenv(choose.FORCE_VARIABLE, "onnxruntime-int8")  # INT8 is a candidate only with images
    with pytest.raises(ValueError, match="is not a candidate here; choose from: pytorch, onnxruntime, openvino$"):
        choose.choose(model, 16, 2)


def test_when_every_candidate_fails_its_check_auto_says_so_in_one_line(fake):
    model, plans, built = fake
    plans.update({"pytorch": (1, True), "onnxruntime": (1, True), "openvino": (1, True)})
    with pytest.raises(ValueError, match=r"^no runtime passed its check \(pytorch: max \|logit difference\| .*; "
                                         r"openvino: .*\): choose one with --runtime$"):
        choose.choose(model, 16, 2)


def test_reduced_precision_needs_the_models_data_and_agreement(fake):
    model, plans, built = fake
    plans.update({"pytorch": (10, False), "onnxruntime": (10, False), "openvino": (10, False),
                  "onnxruntime-int8": (1, True), "openvino-bf16": (5, False), "openvino-int8": (1, True)})
    images = torch.randn(40, 3, 16, 16)
    _, decision = choose.choose(model, 16, 1, images=images)
    assert decision.chosen == "openvino-bf16" and decision.agreement["openvino-bf16"] == 1.0
    assert "agreement with fp32" in decision.refused["onnxruntime-int8"] and decision.agreement["openvino-int8"] < 0.99
    built.clear()
    choose.choose(model, 16, 1)
    assert not [name for name in built if "int8" in name or "bf16" in name]


def test_a_decision_is_cached_per_model_cpu_and_versions(fake, tmp_path, monkeypatch):
    model, plans, built = fake
    plans.update({"pytorch": (10, False), "onnxruntime": (1, False), "openvino": (5, False)})
    cache = tmp_path / "choices.json"
    first = choose.choose(model, 16, 1, model_id="abc", cache=cache)[1]
    built.clear()
    second = choose.choose(model, 16, 1, model_id="abc", cache=cache)[1]
    assert second.cached and second.chosen == first.chosen and built == [first.chosen]  # built, not measured
    built.clear()
    choose.choose(model, 16, 1, model_id="retrained", cache=cache)  # another model: measured again
    assert len(built) == 3
    built.clear()
    choose.choose(model, 16, 8, model_id="abc", cache=cache)  # another batch size: measured again
    assert len(built) == 3
    import mobilenet.machine as machine

    monkeypatch.setattr(machine, "cpu_name", lambda: "another CPU")
    built.clear()
    choose.choose(model, 16, 1, model_id="abc", cache=cache)
    assert len(built) == 3


def test_the_guard_threshold_is_the_callers(fake):
    """--min-agreement moves the one threshold: a candidate agreeing on 35 of 40 images is refused at
    the default (99%) and kept at 85%."""
    model, plans, built = fake
    plans.update({"pytorch": (30, False), "onnxruntime": (30, False), "openvino": (30, False),
                  "onnxruntime-int8": (1, False), "openvino-bf16": (30, False), "openvino-int8": (30, False)})
    images = torch.randn(40, 3, 16, 16)
    real_build = choose.build

    def build(candidate, *args):  # the int8 candidate flips the top-1 of the last 5 images
        runner = real_build(candidate, *args)
        if candidate.name != "onnxruntime-int8":
            return runner
        return Fake(1, lambda x: torch.cat([model(x[:35]), model(x[35:]).flip(1) + 1]))

    choose.build = build
    _, strict = choose.choose(model, 16, 1, images=images)
    _, lenient = choose.choose(model, 16, 1, images=images, min_agreement=0.85)
    assert strict.agreement["onnxruntime-int8"] == pytest.approx(35 / 40)
    assert "below the 99.00% required" in strict.refused["onnxruntime-int8"] and strict.chosen != "onnxruntime-int8"
    assert lenient.chosen == "onnxruntime-int8", lenient


@pytest.mark.parametrize("entry,why", [
    ("a string", "malformed"), (["a", "list"], "malformed"), (None, "malformed"),
    ({"chosen": "onnxruntime", "median_ms": {}, "agreement": {}, "refused": {}, "speed": 1}, "malformed"),
    ({"chosen": "onnxruntime", "median_ms": {"onnxruntime": "fast"}, "agreement": {}, "refused": {}}, "malformed"),
    ({"chosen": "tensorrt", "median_ms": {"tensorrt": 1.0}, "agreement": {}, "refused": {}}, "not a candidate"),
    ({"chosen": "onnxruntime-int8", "median_ms": {"onnxruntime-int8": 1.0}, "agreement": {"onnxruntime-int8": 0.9625},
      "refused": {}}, "does not pass the guard"),
    ({"chosen": "onnxruntime-int8", "median_ms": {"onnxruntime-int8": 1.0}, "agreement": {}, "refused": {}},
     "does not pass the guard"),
])
def test_a_cached_decision_is_used_only_if_well_formed_and_still_passing(fake, tmp_path, capsys, entry, why):
    """A decision cache is ours to rebuild: an entry of the wrong type or shape, naming an unknown
    candidate or a reduced-precision choice below the guard is measured again with one line, never
    a traceback and never used as it is."""
    model, plans, built = fake
    plans.update({"pytorch": (10, False), "onnxruntime": (1, False), "openvino": (10, False),
                  "onnxruntime-int8": (10, False), "openvino-bf16": (10, False), "openvino-int8": (10, False)})
    images = torch.randn(8, 3, 16, 16)
    cache = tmp_path / "choices.json"
    choose.choose(model, 16, 1, images=images, model_id="m", cache=cache)
    (key,) = json.loads(cache.read_text())
    cache.write_text(json.dumps({key: entry}))
    built.clear()
    capsys.readouterr()
    _, decision = choose.choose(model, 16, 1, images=images, model_id="m", cache=cache)
    said = capsys.readouterr().err.strip().splitlines()
    assert not decision.cached and len(built) == 6 and decision.chosen == "onnxruntime"
    assert len(said) == 1 and why in said[0] and str(cache) in said[0], said
    assert choose.choose(model, 16, 1, images=images, model_id="m", cache=cache)[1].cached  # rewritten whole


@pytest.mark.parametrize("content", ["[1, 2]", "null", "{not json", ""])
def test_a_decision_cache_that_is_not_an_object_is_measured_again(fake, tmp_path, capsys, content):
    model, plans, built = fake
    plans.update({"pytorch": (10, False), "onnxruntime": (1, False), "openvino": (10, False)})
    cache = tmp_path / "choices.json"
    cache.write_text(content)
    capsys.readouterr()
    _, decision = choose.choose(model, 16, 1, model_id="m", cache=cache)
    said = capsys.readouterr().err.strip().splitlines()
    assert decision.chosen == "onnxruntime" and len(said) == 1 and "ignoring it" in said[0], said
    assert isinstance(json.loads(cache.read_text()), dict)


def test_auto_for_real_checks_and_times_what_is_installed():
    """No fakes: every installed fp32 runtime is built, checked and timed on a small model."""
    model = create_model("mobilenet_v2", width_mult=0.25, num_classes=3).eval()
    fast, decision = choose.choose(model, 32, 1)
    assert decision.chosen in decision.median_ms and not decision.refused
    assert set(decision.median_ms) == {c.name for c in choose.candidates(False, False)}
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert (fast(x) - model(x)).abs().max().item() <= 1e-4
