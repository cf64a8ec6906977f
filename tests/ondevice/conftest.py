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
    """`bench_rows(*backends)`: rows by backend of `mobilenet bench` of a small V1 on `backends`
    (eager first, the reference); every backend asked for must have run."""
    return lambda *backends: _bench_rows(cli, *backends)


def _bench_rows(cli, *backends: str) -> dict:
    result = cli("bench", "mobilenet_v1", "--width", "0.25", "--resolution", "64", "--batch", "2",
                 "--backend", ",".join(("eager", *backends)), "--iterations", "3", "--warmup", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = {row["backend"]: row for row in report["results"]}
    assert set(rows) == {"eager", *backends}, report["skipped"]
    assert all(row["median_ms"] > 0 for row in rows.values())
    return rows
