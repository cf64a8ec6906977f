"""The phone exports' tests: each file runs in the virtual environment of its converter
(`make test-ondevice` builds .venv-executorch, .venv-tflite and .venv-coreml), never in `make test`."""

import pytest

from mobilenet.train import TrainConfig, train


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A V1 0.25 trained for a few epochs on the digits at 32x32 (its test split is the INT8 check's)."""
    out = tmp_path_factory.mktemp("digits-run")
    train(TrainConfig(out=str(out), model="mobilenet_v1", width=0.25, small_input=True, data="digits", resolution=32,
                      epochs=4, batch_size=32, lr=0.1, seed=0))
    return out / "last.safetensors"


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
