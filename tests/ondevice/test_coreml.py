"""Core ML export (run in .venv-coreml): converted and validated structurally, since Core ML runs
only on Apple's systems; the package is read back by coremltools itself."""

import json

import pytest

pytest.importorskip("coremltools", reason="needs mobilenet[coreml]: `make test-ondevice`")

import coremltools as ct  # noqa: E402

from mobilenet.export import read_phone_metadata  # noqa: E402


def spec_of(path):
    return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def weight_bytes(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("weight.bin"))


def test_fp16_package_has_the_model_s_interface_and_metadata(cli, checkpoint, model_and_meta, tmp_path):
    out = tmp_path / "digits.mlpackage"
    result = cli("export", str(checkpoint), "--format", "coreml", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "validated structurally only" in result.stdout and "not run" in result.stdout
    spec = spec_of(out)
    assert spec.WhichOneof("Type") == "mlProgram"
    (inp,), (outp,) = spec.description.input, spec.description.output
    assert inp.name == "input" and list(inp.type.multiArrayType.shape) == [1, 3, 32, 32]
    assert outp.name == "logits"
    model, meta = model_and_meta
    parameters = sum(p.numel() for p in model.parameters() if p.ndim > 1)  # the weights, not BatchNorm's
    assert 2 * parameters <= weight_bytes(out) <= 2.5 * parameters + 65536  # fp16: two bytes a weight
    props = read_phone_metadata(out)
    assert props["classes"] == meta.classes and props["mean"] == list(meta.mean) and props["std"] == list(meta.std)
    assert props["batch_size"] == 1 and props["precision"] == "fp16" and props["channel_order"] == "RGB"
    assert "(pixel / 255 - mean) / std" in spec.description.input[0].shortDescription


def test_v3_and_v4_convert_to_an_ml_program(cli, later_checkpoint, tmp_path):
    """Hard-swish, hard sigmoid, squeeze-and-excitation and the UIB blocks convert, with the model's interface."""
    checkpoint, model, _ = later_checkpoint
    out = tmp_path / "later.mlpackage"
    result = cli("export", str(checkpoint), "--format", "coreml", "--output", str(out))
    assert result.returncode == 0, result.stderr
    spec = spec_of(out)
    (inp,), (outp,) = spec.description.input, spec.description.output
    assert spec.WhichOneof("Type") == "mlProgram" and list(inp.type.multiArrayType.shape) == [1, 3, 64, 64]
    assert outp.name == "logits"
    parameters = sum(p.numel() for p in model.parameters() if p.ndim > 1)
    assert 2 * parameters <= weight_bytes(out) <= 2.5 * parameters + 65536  # fp16: two bytes a weight


def test_int8_weights_halve_the_package_and_replace_the_old_one(cli, checkpoint, tmp_path):
    out = tmp_path / "m.mlpackage"
    assert cli("export", str(checkpoint), "--format", "coreml", "--output", str(out)).returncode == 0
    fp16 = weight_bytes(out)
    result = cli("export", str(checkpoint), "--format", "coreml", "--int8", "--output", str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["precision"] == "int8 weights, fp16 compute"
    assert weight_bytes(out) < 0.7 * fp16
    assert read_phone_metadata(out)["precision"] == "int8 weights, fp16 compute"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mlpackage"]  # no temporary left beside it


def test_a_failed_check_keeps_the_old_package(checkpoint, tmp_path, monkeypatch):
    from mobilenet.export import coreml, export_checkpoint

    out = tmp_path / "m.mlpackage"
    export_checkpoint(checkpoint, out, "coreml")
    before = weight_bytes(out)
    monkeypatch.setattr(coreml, "WEIGHT_BYTES", {False: 8, True: 8})  # a check that cannot pass
    with pytest.raises(ValueError, match="structural check: weights take"):
        export_checkpoint(checkpoint, out, "coreml")
    assert weight_bytes(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.mlpackage"]
