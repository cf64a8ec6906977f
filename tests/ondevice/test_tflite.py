"""LiteRT export, checked by ai-edge-litert's own interpreter (run in .venv-tflite)."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch", reason="needs mobilenet[tflite]: `make test-ondevice`")

from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from mobilenet.export import export_checkpoint, read_phone_metadata  # noqa: E402
from mobilenet.export import guard  # noqa: E402


def interpret(path, images: np.ndarray) -> np.ndarray:
    """The model run by LiteRT's interpreter directly, as an app calls it: an int8 input is
    quantized, and int8 logits dequantized, with the tensors' own scale and zero point."""
    interpreter = Interpreter(model_path=str(path), num_threads=2)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    if inp["dtype"] == np.int8:
        scale, zero = inp["quantization"]
        images = np.clip(np.round(images / scale) + zero, -128, 127).astype(np.int8)
    interpreter.set_tensor(inp["index"], images)
    interpreter.invoke()
    logits = interpreter.get_tensor(out["index"])
    if out["dtype"] == np.int8:
        scale, zero = out["quantization"]
        logits = (logits.astype(np.float32) - zero) * scale
    return logits


def test_fp32_model_computes_what_the_checkpoint_does(cli, checkpoint, model_and_meta, test_images, tmp_path):
    out = tmp_path / "digits.tflite"
    result = cli("export", str(checkpoint), "--format", "tflite", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "batch fixed at 1" in result.stdout
    model, meta = model_and_meta
    with torch.no_grad():
        expected = model.eval()(test_images).numpy()
    got = np.concatenate([interpret(out, image[None].numpy()) for image in test_images])
    assert np.abs(got - expected).max() <= 1e-4
    props = read_phone_metadata(out)
    assert props["classes"] == meta.classes and props["resolution"] == meta.resolution
    assert props["mean"] == list(meta.mean) and props["std"] == list(meta.std)
    assert props["batch_size"] == 1 and props["input_shape"] == [1, 3, 32, 32] and props["channel_order"] == "RGB"
    assert "input_scale" not in props


def test_v3_and_v4_models_compute_what_pytorch_does(cli, later_checkpoint, tmp_path):
    """Hard-swish, hard sigmoid, squeeze-and-excitation and the UIB blocks, converted and run by LiteRT."""
    checkpoint, model, images = later_checkpoint
    out = tmp_path / "later.tflite"
    result = cli("export", str(checkpoint), "--format", "tflite", "--output", str(out))
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        expected = model(images).numpy()
    got = np.concatenate([interpret(out, image[None].numpy()) for image in images])
    assert np.abs(expected).max() > 1 and np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_int8_model_takes_int8_with_its_scale_in_the_metadata(cli, checkpoint, model_and_meta, test_images, tmp_path):
    out = tmp_path / "int8.tflite"
    result = cli("export", str(checkpoint), "--format", "tflite", "--int8", "--output", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["agreement"] >= guard.MIN_AGREEMENT and report["images"] == 360
    assert report["int8_bytes"] < report["fp32_bytes"] / 2
    props = read_phone_metadata(out)
    interpreter = Interpreter(model_path=str(out))
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.int8 and outp["dtype"] == np.int8
    assert (props["input_scale"], props["input_zero_point"]) == pytest.approx(inp["quantization"])
    assert (props["output_scale"], props["output_zero_point"]) == pytest.approx(outp["quantization"])
    model = model_and_meta[0].eval()
    with torch.no_grad():
        top = np.concatenate([interpret(out, image[None].numpy()) for image in test_images]).argmax(1)
        assert (top == model(test_images).argmax(1).numpy()).mean() >= 0.9


def test_batch_size_is_fixed_stated_and_refused_cleanly(cli, checkpoint, model_and_meta, test_images, tmp_path):
    out = tmp_path / "b4.tflite"
    assert cli("export", str(checkpoint), "--format", "tflite", "--output", str(out),
               "--batch-size", "4").returncode == 0
    assert read_phone_metadata(out)["batch_size"] == 4
    model = model_and_meta[0].eval()
    with torch.no_grad():
        assert np.abs(interpret(out, test_images[:4].numpy()) - model(test_images[:4]).numpy()).max() <= 1e-4
    from mobilenet.export.litert import LiteRTSession

    with pytest.raises(ValueError, match=r"b4.tflite takes a batch of 4"):
        LiteRTSession(out)(test_images[:2])


def test_int8_below_the_agreement_floor_is_refused_and_writes_nothing(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(guard, "MIN_AGREEMENT", 1.01)
    with pytest.raises(ValueError, match="top-1 agreement with fp32 .* is below the 101.00% required .* nothing written"):
        export_checkpoint(checkpoint, tmp_path / "m.tflite", "tflite", int8=True)
    assert list(tmp_path.iterdir()) == []


def test_grey_model_says_so(cli, tmp_path):
    from mobilenet.train import TrainConfig, train

    train(TrainConfig(out=str(tmp_path / "run"), model="mobilenet_v1", width=0.25, small_input=True, data="digits",
                      resolution=16, in_chans=1, epochs=1, batch_size=64, seed=0))
    out = tmp_path / "grey.tflite"
    assert cli("export", str(tmp_path / "run" / "last.safetensors"), "--format", "tflite",
               "--output", str(out)).returncode == 0
    props = read_phone_metadata(out)
    assert props["channel_order"] == "grey" and props["input_shape"] == [1, 1, 16, 16]


def test_bench_has_tflite_rows(bench_rows):
    rows = bench_rows("tflite", "tflite-int8")
    assert rows["tflite"]["max_abs_diff"] <= 1e-4  # fp32 against eager on the same random batch
