"""`auto` chooses by measuring: the fastest candidate that passes its check wins, reduced
precisions only with the model's own images and at 99% agreement, and the decision is cached
per model, CPU and versions."""

import time

import pytest
import torch
from torch import nn

import mobilenet.export.choose as choose
from mobilenet import create_model


class Fake(nn.Module):
    """A candidate that takes `ms` a call and returns `logits(x)`."""

    def __init__(self, ms: float, logits) -> None:
        super().__init__()
        self.ms, self.logits = ms, logits

    def forward(self, x):
        time.sleep(self.ms / 1000)
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
    monkeypatch.setattr(choose, "_bf16", lambda: True)
    monkeypatch.setattr(choose, "available", lambda name: True)
    return model, plans, built


def test_the_fastest_checked_candidate_wins(fake, tmp_path):
    model, plans, built = fake
    plans.update({"pytorch": (40, False), "onnxruntime": (2, True), "openvino": (15, False)})
    fast, decision = choose.choose(model, 16, 2)  # no images: fp32 candidates only
    assert set(built) == {"pytorch", "onnxruntime", "openvino"}
    assert decision.chosen == "openvino" and "max |logit difference|" in decision.refused["onnxruntime"], decision
    assert decision.median_ms["openvino"] < decision.median_ms["pytorch"]
    assert "backend openvino: fastest measured here" in decision.describe()


def test_reduced_precision_needs_the_models_data_and_agreement(fake):
    model, plans, built = fake
    plans.update({"pytorch": (40, False), "onnxruntime": (40, False), "openvino": (40, False),
                  "onnxruntime-int8": (2, True), "openvino-bf16": (15, False), "openvino-int8": (2, True)})
    images = torch.randn(40, 3, 16, 16)
    _, decision = choose.choose(model, 16, 1, images=images)
    assert decision.chosen == "openvino-bf16" and decision.agreement["openvino-bf16"] == 1.0
    assert "agreement with fp32" in decision.refused["onnxruntime-int8"] and decision.agreement["openvino-int8"] < 0.99
    built.clear()
    choose.choose(model, 16, 1)
    assert not [name for name in built if "int8" in name or "bf16" in name]


def test_a_decision_is_cached_per_model_cpu_and_versions(fake, tmp_path, monkeypatch):
    model, plans, built = fake
    plans.update({"pytorch": (40, False), "onnxruntime": (2, False), "openvino": (15, False)})
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
    import mobilenet.bench.machine as machine

    monkeypatch.setattr(machine, "cpu_name", lambda: "another CPU")
    built.clear()
    choose.choose(model, 16, 1, model_id="abc", cache=cache)
    assert len(built) == 3


def test_auto_for_real_checks_and_times_what_is_installed():
    """No fakes: every installed fp32 runtime is built, checked and timed on a small model."""
    model = create_model("mobilenet_v2", width_mult=0.25, num_classes=3).eval()
    fast, decision = choose.choose(model, 32, 1)
    assert decision.chosen in decision.median_ms and not decision.refused
    assert set(decision.median_ms) == {c.name for c in choose.candidates(False, False)}
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert (fast(x) - model(x)).abs().max().item() <= 1e-4
