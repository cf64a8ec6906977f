"""OpenVINO as a runtime: the same ONNX file compiled at fp32 (checked against PyTorch like ONNX
Runtime), at bfloat16 where the CPU has it, and our INT8 QDQ file; in eval, predict and bench."""

import copy
import json
import subprocess
import sys

import pytest
import torch
from test_export import small  # noqa: F401 - a shared fixture

from mobilenet import bench
from mobilenet.export import export_onnx, runtime_model
from mobilenet.optional import available

pytestmark = pytest.mark.skipif(not (available("openvino") and available("onnxruntime")),
                                reason="openvino (installed by make install) is missing")


def test_openvino_fp32_computes_what_pytorch_computes(small):  # noqa: F811
    model, _, images = small
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(100)  # logits of a real size, so that the bound means something
    fast, runtime = runtime_model(model, 64, "openvino")
    with torch.inference_mode():
        expected = model(images)
        diff = (fast(images) - expected).abs().max().item()
    assert runtime == "openvino" and diff <= 1e-4 and expected.abs().max().item() > 1


def test_bf16_and_int8_in_openvino(small, tmp_path):  # noqa: F811
    from mobilenet.export import openvino, quantize
    from mobilenet.export.onnx import run

    model, meta, images = small
    path = tmp_path / "m.onnx"
    export_onnx(model, path, images, meta=meta)
    fp32 = run(openvino.session(path, "f32"), images)
    if "BF16" in openvino.capabilities():
        bf16 = run(openvino.session(path, "bf16"), images)
        assert 0 < abs(bf16 - fp32).max() < 0.1 * abs(fp32).max()  # bfloat16 rounding: close, not equal
    else:
        with pytest.raises(ValueError, match="no bfloat16"):
            openvino.session(path, "bf16")
    quantize(path, tmp_path / "int8.onnx", images)
    int8 = run(openvino.session(tmp_path / "int8.onnx"), images)
    assert int8.shape == fp32.shape and abs(int8 - fp32).max() < abs(fp32).max()
    with pytest.raises(ValueError, match="precision must be one of f32, bf16"):
        openvino.session(path, "fp8")


def test_eval_and_predict_on_openvino(digits_checkpoint, cli, tmp_path):
    checkpoint, _ = digits_checkpoint
    runs = {b: cli("eval", checkpoint, "--data", "digits", "--json", "--runtime", b, "--plot", tmp_path / f"{b}.png")
            for b in ("onnxruntime", "openvino")}
    assert all(r.returncode == 0 for r in runs.values()), [r.stderr for r in runs.values()]
    ort, ov = (json.loads(r.stdout) for r in runs.values())
    assert ov["runtime"] == "openvino" and ov["confusion"] == ort["confusion"]
    assert ov["loss"] == pytest.approx(ort["loss"], rel=1e-4)


def test_bench_rows_for_openvino():
    model = bench.build("mobilenet_v1", width=0.25)[0]
    report = bench.measure(model, resolution=64, runtimes="onnxruntime,openvino,openvino-bf16,openvino-int8",
                           iterations=2, warmup=1)
    measured = {r["runtime"] for r in report["results"]} | {s["runtime"] for s in report["skipped"]}
    assert {"openvino", "openvino-int8"} <= {r["runtime"] for r in report["results"]}
    assert measured == {"onnxruntime", "openvino", "openvino-bf16", "openvino-int8"}


def test_without_openvino_the_backend_says_what_to_install(digits_checkpoint, tmp_path):
    checkpoint, _ = digits_checkpoint
    code = ("import sys; sys.modules['openvino'] = None\n"
            "from mobilenet.cli import main\n"
            f"sys.exit(main(['eval', {str(checkpoint)!r}, '--data', 'digits', '--runtime', 'openvino', "
            f"'--plot', {str(tmp_path / 'cm.png')!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "pip install 'mobilenet[openvino]'" in lines[0], out.stderr


def test_export_to_openvino_ir_round_trip(digits_checkpoint, cli, tmp_path):
    """The IR that `export --format openvino` writes, read back by OpenVINO's own Core (not our
    session), computes the checkpoint's logits and carries the ONNX export's metadata."""
    import numpy as np
    import openvino as ov

    from mobilenet.data import load_dataset
    from mobilenet.export import openvino, read_metadata, sample_images

    checkpoint, model = digits_checkpoint
    result = cli("export", checkpoint, "--format", "openvino", "--output", tmp_path / "m.xml",
                 "--calibration-data", "digits")
    assert result.returncode == 0, result.stderr
    assert "m.bin" in result.stdout and (tmp_path / "m.bin").stat().st_size > 100_000  # fp32 weights
    assert cli("export", checkpoint, "--output", tmp_path / "m.onnx").returncode == 0
    onnx_meta, ir_meta = read_metadata(tmp_path / "m.onnx"), openvino.read_metadata(tmp_path / "m.xml")
    for key in ("classes", "mean", "std", "resolution", "config"):
        assert ir_meta[key] == onnx_meta[key]
    assert ir_meta["classes"] == [str(d) for d in range(10)] and ir_meta["format"] == "mobilenet.openvino/1"
    test = load_dataset("digits", "test")
    images = sample_images(test, 64)
    compiled = ov.Core().compile_model(str(tmp_path / "m.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    with torch.inference_mode():
        expected = model.eval()(images).numpy()
    assert np.abs(compiled(images.numpy())[0] - expected).max() <= 1e-4
    assert not list(tmp_path.glob(".*tmp-*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.onnx", "m.xml"]


def test_openvino_int8_ir_reports_agreement(digits_checkpoint, cli, tmp_path):
    """The INT8 IR's reported figures are what OpenVINO's own Core computes from the written files."""
    import openvino as ov

    from mobilenet.data import load_dataset
    from mobilenet.export import openvino

    checkpoint, model = digits_checkpoint
    result = cli("export", checkpoint, "--format", "openvino", "--int8", "--output", tmp_path / "q.xml",
                 "--calibration-data", "digits", "--calibration-images", "128", "--min-agreement", "0", "--json")
    assert result.returncode == 0, result.stderr  # the figures, whatever the guard makes of them (test_export)
    report = json.loads(result.stdout)
    assert report["images"] == 360
    assert "int8" in openvino.read_metadata(tmp_path / "q.xml")["quantization"]
    # the weights are stored as 8-bit integers: about a quarter of the fp32 file's size
    assert (tmp_path / "q.bin").stat().st_size < 0.35 * report["fp32_bytes"]
    test = load_dataset("digits", "test")
    mean, std = torch.tensor(test.mean).view(1, 3, 1, 1), torch.tensor(test.std).view(1, 3, 1, 1)
    x = ((test.images.float() / 255 - mean) / std).numpy()
    top8 = ov.Core().compile_model(str(tmp_path / "q.xml"), "CPU")(x)[0].argmax(1)
    with torch.inference_mode():
        top32 = model.eval()(torch.from_numpy(x)).argmax(1).numpy()
    labels = test.labels.numpy()
    assert report["int8_top1"] == pytest.approx((top8 == labels).mean(), abs=1.5 / 360)  # up to a tie
    assert report["agreement"] == pytest.approx((top8 == top32).mean(), abs=1.5 / 360)
    assert report["fp32_top1"] > 0.8 and report["agreement"] >= 0.9  # a trained model survives quantization


def test_openvino_ir_export_refuses_cleanly_and_keeps_the_old_files(digits_checkpoint, cli, tmp_path,
                                                                   monkeypatch):
    checkpoint, _ = digits_checkpoint
    result = cli("export", checkpoint, "--format", "openvino", "--output", tmp_path / "m.onnx")
    assert result.returncode == 2 and "NAME.xml" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    (tmp_path / "m.xml").write_text("old graph")
    (tmp_path / "m.bin").write_text("old weights")
    from mobilenet.export import openvino

    def disagree(*args, **kwargs):
        raise ValueError("exported model disagrees with PyTorch (injected)")

    monkeypatch.setattr(openvino, "check_against", disagree)
    result = cli("export", checkpoint, "--format", "openvino", "--output", tmp_path / "m.xml")
    assert result.returncode == 2 and "disagrees" in result.stderr
    assert (tmp_path / "m.xml").read_text() == "old graph" and (tmp_path / "m.bin").read_text() == "old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]
