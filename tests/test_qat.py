"""Quantization-aware training (`mobilenet qat`): PT2E fine-tuning of a trained checkpoint, its INT8
files checked against what they claim, and the inputs it refuses."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

onnx = pytest.importorskip("onnx", reason="the export extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed")
if importlib.util.find_spec("torchao") is None:  # found, not imported: its import costs seconds at collection
    pytest.skip("the qat extra is not installed", allow_module_level=True)

from mobilenet.checkpoint import load_checkpoint  # noqa: E402  (after the skips)
from mobilenet.data import load_dataset  # noqa: E402
from mobilenet.export.int8 import integer_kernels_saturate  # noqa: E402
from mobilenet.train import qat  # noqa: E402

pytestmark = pytest.mark.xdist_group("qat")  # the module's QAT run, shared


def _test_images():
    test = load_dataset("digits", "test")
    mean, std = torch.tensor(test.mean).view(1, 3, 1, 1), torch.tensor(test.std).view(1, 3, 1, 1)
    return ((test.images.float() / 255 - mean) / std), test.labels


@pytest.fixture(scope="module")
def qat_run(digits_checkpoint, tmp_path_factory):
    path, model = digits_checkpoint
    out = tmp_path_factory.mktemp("qat") / "out"
    options = qat.QatOptions(epochs=2, batch_size=64, images=512, calibration_images=64)
    report = qat.quantization_aware(path, out, options, data="digits", progress=False)
    return path, model, out, report


def test_qat_writes_int8_files_that_compute_what_it_reports(qat_run):
    path, model, out, report = qat_run
    assert sorted(p.name for p in out.iterdir()) == sorted(qat.FILES["onnxruntime"])
    assert json.loads((out / qat.REPORT).read_text()) == json.loads(json.dumps(report))
    graph = onnx.load(str(out / qat.INT8_ONNX))
    ops = [node.op_type for node in graph.graph.node]
    convs = ops.count("Conv")
    # every convolution's weight and input go through INT8: a Q/DQ pair on each, the scales QAT observed
    assert ops.count("DequantizeLinear") >= 2 * convs and ops.count("QuantizeLinear") >= convs
    props = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(props["classes"]) == [str(i) for i in range(10)]
    assert "quantization-aware" in props["quantization"]
    assert ("7 bits" in props["quantization"]) == integer_kernels_saturate()
    # the report's figures, recomputed from the files: ONNX Runtime for INT8, PyTorch for fp32
    images, labels = _test_images()
    session = ort.InferenceSession(str(out / qat.INT8_ONNX), providers=["CPUExecutionProvider"])
    int8 = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0].argmax(1)
    with torch.no_grad():
        fp32 = model.eval()(images).argmax(1).numpy()
    rows = {(row["method"], row["runtime"]): row for row in report["rows"]}
    row = rows["QAT", "onnxruntime"]
    assert row["images"] == len(labels)
    assert row["int8_top1"] == pytest.approx((int8 == labels.numpy()).mean(), abs=1e-9)
    assert row["agreement"] == pytest.approx((int8 == fp32).mean(), abs=1.5 / len(labels))  # fp32 ONNX: up to a tie
    # the guard: each file computes the PT2E program it was written from; the fine-tuned model stays as good
    assert row["program_agreement"] >= 0.99 and rows["QAT", "openvino"]["program_agreement"] >= 0.99
    assert rows["PTQ", "onnxruntime"]["agreement"] >= 0.99
    assert row["int8_top1"] >= row["fp32_top1"] - 0.03


def test_qat_fine_tunes_with_quantization_simulated_and_the_trainers_decay(qat_run):
    """The fine-tuned float weights are a checkpoint that moved from the original; the prepared
    program's forward is not the float model's (its weights and activations are rounded to INT8);
    its optimizer takes the trainer's weight-decay groups (none on depthwise filters, BatchNorm or
    biases), found from the model's names since the program has no modules to tell them by."""
    path, model, out, report = qat_run
    tuned, meta = load_checkpoint(out / qat.WEIGHTS, with_meta=True)
    original = model.state_dict()
    moved = [name for name, value in tuned.state_dict().items()
             if value.is_floating_point() and not torch.equal(value, original[name])]
    assert moved and meta.classes == [str(i) for i in range(10)]
    assert [epoch["epoch"] for epoch in report["epochs"]] == [1, 2]
    assert [round(epoch["images_per_s"] * epoch["seconds"]) for epoch in report["epochs"]] == [512, 512]
    images, _ = _test_images()
    traced = qat.build_like(tuned, meta)
    prepared = qat.prepare(traced, images[:2])
    names = {id(param): name for name, param in prepared.named_parameters()}
    decayed, exempt = ({names[id(param)] for param in group["params"]}
                       for group in qat.weight_decay_groups(prepared, traced, 5e-5))
    depthwise = {f"{name}.weight" for name, module in traced.named_modules()
                 if isinstance(module, torch.nn.Conv2d) and module.groups > 1}
    assert depthwise and depthwise <= exempt and not depthwise & decayed
    assert decayed | exempt == set(names.values()) and all(name.endswith("weight") for name in decayed)
    pt2e = qat._pt2e()[0]
    pt2e.move_exported_model_to_eval(prepared)
    tuned.eval()
    with torch.no_grad():
        prepared(images[:64])  # the observers see data: the fake quantization takes real scales
        simulated, exact = prepared(images[:64]), tuned(images[:64])
    difference = (simulated - exact).abs().max().item()
    assert 1e-4 < difference < 0.5 * exact.abs().max().item()  # rounded, but the same model


def test_qat_refuses_bad_input_in_one_line_and_writes_nothing(cli, digits_checkpoint, tmp_path):
    path, _ = digits_checkpoint
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    for args, message in [
        (["--out", taken, "--data", "digits"], "is not empty"),
        (["--out", tmp_path / "new"], "does not name its training data: pass --data"),
        (["--out", tmp_path / "new", "--data", "digits", "--lr", "0"], "lr must be a positive number"),
        (["--out", tmp_path / "no" / "new", "--data", "digits"], "does not exist"),
        (["--out", tmp_path / "new", "--data", "digits", "--epochs", "0"], "--epochs must be a positive integer"),
    ]:
        result = cli("qat", path, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert (taken / "notes.txt").read_text() == "mine" and sorted(os.listdir(taken)) == ["notes.txt"]
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_a_qat_file_below_the_guard_is_not_written(digits_checkpoint, tmp_path, monkeypatch):
    """The guard runs before anything reaches --out: a failing QAT file leaves neither the folder nor
    a staged copy of it."""
    path, _ = digits_checkpoint
    real = qat.compare
    calls = []

    def compare(*args):
        calls.append(1)
        agreement, fp32, int8, images = real(*args)
        # the third: the QAT file against the program it was written from (the second: against fp32)
        return (0.5, fp32, int8, images) if len(calls) == 3 else (agreement, fp32, int8, images)

    monkeypatch.setattr(qat, "compare", compare)
    # not this test's subject: the float model stands for the PT2E program (torchao's conversion alone costs 17 s)
    monkeypatch.setattr(qat, "prepare", lambda model, example, quantizer=None: model)
    monkeypatch.setattr(qat, "fine_tune", lambda *args: [])
    monkeypatch.setattr(qat, "convert", lambda prepared: prepared)
    with pytest.raises(ValueError, match="below the 99.00% required"):
        qat.quantization_aware(path, tmp_path / "out", qat.QatOptions(calibration_images=32), data="digits",
                               progress=False)
    assert os.listdir(tmp_path) == []


def test_the_saturation_setting_reaches_the_qat_quantizer(monkeypatch):
    """Where the integer kernels saturate, QAT's weights take 7 bits (-64..63), else 8; activations
    keep the whole uint8 range either way (an ONNX QuantizeLinear clamps to nothing narrower)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    for saturate, weights in [(True, (-64, 63)), (False, (-128, 127))]:
        monkeypatch.setattr(qat, "integer_kernels_saturate", lambda: saturate)
        prepared = qat.prepare(model, torch.randn(2, 3, 8, 8))
        ranges = {(module.dtype, module.quant_min, module.quant_max) for name, module in prepared.named_modules()
                  if name.startswith("activation_post_process")}
        assert ranges == {(torch.int8, *weights), (torch.uint8, 0, 255)}
