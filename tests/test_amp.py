"""`--amp auto`: bf16 autocast decided by a probe of the training step, cached, recorded, kept on resume."""

import json

import torch
from runs import tiny
from torch import nn

from mobilenet import create_model
from mobilenet.train import amp, train


def batch(n=8, side=16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, side, side, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_the_probe_leaves_the_model_and_the_generators_alone():
    model = create_model("mobilenet_v2", width_mult=0.25, num_classes=3, small_input=True).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    ratio = amp.probe(model, *batch(), nn.CrossEntropyLoss())
    assert ratio > 0 and torch.equal(torch.get_rng_state(), rng)  # V2's dropout draws inside the probe
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics too
    assert all(p.grad is None for p in model.parameters())


def test_auto_follows_the_probe_and_caches_it(monkeypatch, tmp_path):
    calls = []
    speed = {"ratio": 1.2}
    monkeypatch.setattr(amp, "probe", lambda *args: calls.append(1) or speed["ratio"])
    model, cache = create_model("mobilenet_v1", width_mult=0.25, num_classes=3), tmp_path / "amp.json"
    criterion = nn.CrossEntropyLoss()
    first = amp.choose_amp("auto", model, *batch(), criterion, cache=cache)
    assert first.bf16 and first.speedup == 1.2 and "1.20x" in first.why
    speed["ratio"] = 0.8  # the machine changed its mind, but the cache holds the decision
    assert amp.choose_amp("auto", model, *batch(), criterion, cache=cache).bf16 and len(calls) == 1
    slower = amp.choose_amp("auto", model, *batch(n=4), criterion, cache=cache)  # another batch shape: probed
    assert not slower.bf16 and len(calls) == 2
    assert not amp.choose_amp("auto", model, *batch(), criterion, cache=tmp_path / "other.json").bf16
    for setting, expected in (("on", True), ("off", False)):  # asked: never probed
        assert amp.choose_amp(setting, model, *batch(), criterion, cache=cache).bf16 is expected
    assert len(calls) == 3


def test_a_run_records_the_decision_and_a_resume_keeps_it(monkeypatch, tmp_path):
    monkeypatch.setenv("MOBILENET_DATA", str(tmp_path / "data"))  # its own cache: other tests' runs stay fp32-probed
    monkeypatch.setattr(amp, "probe", lambda *args: 1.5)
    train(tiny(tmp_path / "run"), stop_after=1)
    monkeypatch.setattr(amp, "probe", lambda *args: 0.5)
    monkeypatch.setattr(amp, "read_cache", lambda path: {})  # no cache either: only the run's own record
    train(tiny(tmp_path / "run"), resume=True)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["amp"], m["amp_probe"]) for m in metrics] == [("bf16", 1.5), ("bf16", 1.5)]
    train(tiny(tmp_path / "off", amp="off"))
    assert {json.loads(line)["amp"] for line in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines()} == {"fp32"}


def test_the_fused_probe_leaves_the_model_and_the_generators_alone(tmp_path):
    from mobilenet.fused import BatchNormAct2d

    model = create_model("mobilenet_v2", width_mult=0.25, num_classes=3, small_input=True).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    images, labels = batch()
    ratio = amp.probe_fused(model, images.contiguous(memory_format=torch.channels_last), labels,
                            nn.CrossEntropyLoss(), cache=tmp_path / "cache.json")
    assert ratio > 0 and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, BatchNormAct2d) for m in model.modules())  # the probe fused a copy
    assert all(p.grad is None for p in model.parameters())


def test_a_run_fuses_batchnorm_where_the_probe_finds_it_faster_and_keeps_the_decision(monkeypatch, tmp_path):
    from mobilenet.fused import available

    if not available():
        return
    speed = {"fused": 1.3}

    def fake(baseline, candidate, images, labels, criterion, bf16=(False, False)):
        return speed["fused"] if bf16 == (False, False) else 0.5  # the fused probe; bf16 stays off

    monkeypatch.setattr(amp, "step_speedup", fake)
    monkeypatch.setenv("MOBILENET_DATA", str(tmp_path / "data"))
    train(tiny(tmp_path / "run"), stop_after=1)
    speed["fused"] = 0.7
    monkeypatch.setattr(amp, "read_cache", lambda path: {})  # no cache: only the run's own record
    train(tiny(tmp_path / "run"), resume=True)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["fused_probe"] for m in metrics] == [1.3, 1.3] and all(m["fused_bn"] > 10 for m in metrics)
    assert train(tiny(tmp_path / "slower"))["fused_bn"] == 0  # probed anew: 0.7x, not fused
    asked = train(tiny(tmp_path / "unfused", fused_bn=False))
    assert asked["fused_bn"] == 0 and asked["fused_probe"] is None
