"""Published weights from the command line: convert, predict with ImageNet names, fine-tune."""

import json

import numpy as np
import torch
from PIL import Image
from test_convert import keras_layers, torchvision_v2_state, write_keras

from mobilenet.checkpoint import load_checkpoint


def test_convert_predict_and_fine_tune_a_torchvision_file(cli, tmp_path):
    source = tmp_path / "mobilenet_v2-test.pth"
    torch.save(torchvision_v2_state(0.35, 1000), source)
    ckpt = tmp_path / "v2.safetensors"
    converted = cli("convert", source, "--from", "torchvision", "--output", ckpt)
    assert converted.returncode == 0, converted.stderr
    assert "mobilenet_v2 width 0.35, 1000 classes, activation relu6" in converted.stdout

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(tmp_path / "p.jpg")
    predicted = cli("predict", ckpt, tmp_path / "p.jpg", "--top-k", "3", "--json")
    assert predicted.returncode == 0, predicted.stderr
    names = {line.strip() for line in open(next(iter(__import__("mobilenet").__path__)) + "/data/imagenet_classes.txt")}
    [item] = json.loads(predicted.stdout)
    assert len(item["predictions"]) == 3 and all(p["class"] in names for p in item["predictions"])

    out = tmp_path / "ft"
    tuned = cli("train", "--out", out, "--pretrained", ckpt, "--data", "digits", "--classes", "0,1",
                "--resolution", "32", "--epochs", "2", "--freeze-epochs", "1", "--batch-size", "32",
                "--lr", "0.01", "--no-progress")
    assert tuned.returncode == 0, tuned.stderr
    model, meta = load_checkpoint(out / "last.safetensors", with_meta=True)
    assert meta.classes == ["0", "1"] and model.classifier.out_features == 2
    assert model.config.activation == "relu6" and model.config.width_mult == 0.35
    assert meta.mean == (0.485, 0.456, 0.406)  # the pretrained model's own normalisation


def test_convert_a_keras_file_records_tf_options(cli, tmp_path):
    source = tmp_path / "mobilenet_v2_weights.h5"
    write_keras(source, keras_layers("v2", 0.35, 1000), "keras2")
    ckpt = tmp_path / "k.safetensors"
    proc = cli("convert", source, "--from", "keras", "--output", ckpt)
    assert proc.returncode == 0, proc.stderr
    model = load_checkpoint(ckpt)
    assert (model.config.padding, model.config.bn_eps) == ("tf_same", 1e-3)


def test_convert_errors(cli, tmp_path):
    state = torchvision_v2_state(0.35, 10)
    state["features.1.conv.9.weight"] = torch.zeros(1)
    source = tmp_path / "extra.pth"
    torch.save(state, source)
    for args, text in [
        ((source, "--from", "torchvision", "--output", tmp_path / "o.safetensors"), "features.1.conv.9.weight"),
        ((tmp_path / "none.pth", "--from", "torchvision", "--output", tmp_path / "o.safetensors"), "none.pth"),
        (("--from", "timm", "--output", tmp_path / "o.safetensors"), "give a SOURCE"),
        ((source, "--from", "caffe", "--output", tmp_path / "o.safetensors"), "invalid choice"),
    ]:
        proc = cli("convert", *args)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert text in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.safetensors").exists()
