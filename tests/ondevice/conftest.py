"""The phone exports' tests: each file runs in the virtual environment of its converter
(`make test-ondevice` builds .venv-executorch, .venv-tflite and .venv-coreml), never in `make test`."""

import json

import pytest

from mobilenet.train import TrainConfig, train


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A V1 0.25 trained for a few epochs on the digits at 32x32 (its test split is the INT8 check's)."""
    out = tmp_path_factory.mktemp("digits-run")
    train(TrainConfig(out=str(out), model="mobilenet_v1", width=0.25, small_input=True, data="digits", resolution=32,
                      epochs=4, batch_size=32, lr=0.1, seed=0))
    return out / "last.safetensors"


@pytest.fixture(scope="session", params=["mobilenet_v3_small", "mobilenet_v4_conv_small"])
def later_checkpoint(request, tmp_path_factory):
    """V3-Small (squeeze-and-excitation, hard-swish, hard sigmoid, 5x5 depthwise) and V4 Conv-S (UIB
    blocks) at width 0.5 and 64x64, random weights with BatchNorm statistics far from 0 and 1 and
    logits of a real size: what the export checks need is their operators, not accuracy. Returns
    (checkpoint, model, images)."""
    import torch

    from mobilenet import create_model
    from mobilenet.checkpoint import ModelMeta, save_checkpoint
    from reference import randomise_batchnorm

    torch.manual_seed(0)
    model = create_model(request.param, width_mult=0.5, num_classes=5).eval()
    randomise_batchnorm(model)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1)
    meta = ModelMeta(config=model.config, classes=list("abcde"), resolution=64, mean=(0.5,) * 3, std=(0.25,) * 3)
    path = tmp_path_factory.mktemp(request.param) / "model.safetensors"
    save_checkpoint(path, model, meta)
    return path, model, torch.randn(3, 3, 64, 64)


@pytest.fixture(scope="session")
def model_and_meta(checkpoint):
    from mobilenet.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint, with_meta=True)


@pytest.fixture(scope="session")
def test_images(model_and_meta):
    from mobilenet.data import load_dataset
    from mobilenet.export import sample_images

    model, meta = model_and_meta
    return sample_images(load_dataset("digits", "test", resolution=meta.resolution), 16, meta=meta)


@pytest.fixture
def bench_rows(cli):
    """`bench_rows(*runtimes)`: rows by runtime of `mobilenet bench` of a small V1 on `runtimes`
    (eager first, the reference); every runtime asked for must have run."""
    return lambda *runtimes: _bench_rows(cli, *runtimes)


def _bench_rows(cli, *runtimes: str) -> dict:
    result = cli("bench", "mobilenet_v1", "--width", "0.25", "--resolution", "64", "--batch", "2",
                 "--runtime", ",".join(("eager", *runtimes)), "--iterations", "3", "--warmup", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = {row["runtime"]: row for row in report["results"]}
    assert set(rows) == {"eager", *runtimes}, report["skipped"]
    assert all(row["median_ms"] > 0 for row in rows.values())
    return rows
