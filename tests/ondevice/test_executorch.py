"""ExecuTorch export, checked by ExecuTorch's own Python runtime (run in .venv-executorch)."""

import json

import pytest
import torch

pytest.importorskip("executorch", reason="needs mobilenet[executorch]: `make test-ondevice`")

from executorch.runtime import Runtime  # noqa: E402

from mobilenet.export import export_checkpoint, read_phone_metadata  # noqa: E402
from mobilenet.export import guard  # noqa: E402


def run_pte(path, images: torch.Tensor) -> torch.Tensor:
    """The program run by ExecuTorch's runtime directly, one call per batch, as an app calls it."""
    method = Runtime.get().load_program(str(path)).load_method("forward")
    return method.execute([images.contiguous()])[0]


def test_fp32_program_computes_what_the_checkpoint_does(cli, checkpoint, model_and_meta, test_images, tmp_path):
    out = tmp_path / "digits.pte"
    result = cli("export", str(checkpoint), "--format", "executorch", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "batch fixed at 1" in result.stdout and "digits.pte.json" in result.stdout
    model, meta = model_and_meta
    with torch.no_grad():
        expected = model.eval()(test_images)
    got = torch.cat([run_pte(out, image[None]) for image in test_images])
    assert (got - expected).abs().max() <= 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()
    props = read_phone_metadata(out)
    assert json.loads((tmp_path / "digits.pte.json").read_text()) == props
    assert props["classes"] == meta.classes and props["resolution"] == meta.resolution
    assert props["mean"] == list(meta.mean) and props["std"] == list(meta.std)
    assert props["batch_size"] == 1 and props["input_shape"] == [1, 3, 32, 32]
    assert props["channel_order"] == "RGB" and props["layout"] == "NCHW"


def test_v3_and_v4_programs_compute_what_pytorch_does(cli, later_checkpoint, tmp_path):
    """Hard-swish, hard sigmoid, squeeze-and-excitation and the UIB blocks, lowered and run by ExecuTorch."""
    checkpoint, model, images = later_checkpoint
    out = tmp_path / "later.pte"
    result = cli("export", str(checkpoint), "--format", "executorch", "--output", str(out))
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        expected = model(images)
    got = torch.cat([run_pte(out, image[None]) for image in images])
    assert expected.abs().max() > 1 and (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_batch_size_is_fixed_stated_and_refused_cleanly(cli, checkpoint, model_and_meta, test_images, tmp_path):
    out = tmp_path / "b4.pte"
    assert cli("export", str(checkpoint), "--format", "executorch", "--output", str(out),
               "--batch-size", "4").returncode == 0
    assert read_phone_metadata(out)["batch_size"] == 4
    model = model_and_meta[0].eval()
    with torch.no_grad():
        assert (run_pte(out, test_images[:4]) - model(test_images[:4])).abs().max() <= 1e-4
    from mobilenet.export.pte import PteSession

    session = PteSession(out)
    with pytest.raises(ValueError, match=r"b4.pte takes a batch of 4 .*--batch-size.*\(1, 3, 32, 32\)"):
        session(test_images[:1])
    with pytest.raises(RuntimeError):  # what the runtime itself does with another batch
        run_pte(out, test_images[:1])
    bad = cli("export", str(checkpoint), "--format", "executorch", "--output", str(tmp_path / "x.pte"),
              "--batch-size", "0")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_int8_program_agrees_with_fp32_and_reports_it(cli, checkpoint, model_and_meta, test_images, tmp_path):
    out = tmp_path / "int8.pte"
    result = cli("export", str(checkpoint), "--format", "executorch", "--int8", "--output", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["agreement"] >= guard.MIN_AGREEMENT and report["images"] == 360  # the digits test split
    assert report["int8_bytes"] < report["fp32_bytes"] / 2
    assert "XNNPACKQuantizer" in read_phone_metadata(out)["quantization"]
    model = model_and_meta[0].eval()
    with torch.no_grad():  # the runtime's own answer agrees with the checkpoint's on these images
        top = torch.cat([run_pte(out, image[None]) for image in test_images]).argmax(1)
        assert (top == model(test_images).argmax(1)).float().mean() >= 0.9


def test_int8_below_the_agreement_floor_is_refused_and_writes_nothing(checkpoint, tmp_path, monkeypatch):
    (tmp_path / "kept.pte").write_bytes(b"old")
    monkeypatch.setattr(guard, "MIN_AGREEMENT", 1.01)
    with pytest.raises(ValueError, match="top-1 agreement with fp32 .* is below the 101.00% required .* nothing written"):
        export_checkpoint(checkpoint, tmp_path / "kept.pte", "executorch", int8=True)
    assert (tmp_path / "kept.pte").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.pte"]


def test_wrong_suffix_is_one_line(cli, checkpoint, tmp_path):
    result = cli("export", str(checkpoint), "--format", "executorch", "--output", str(tmp_path / "m.onnx"))
    assert result.returncode == 2 and "NAME.pte" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bench_has_executorch_rows(bench_rows):
    rows = bench_rows("executorch", "executorch-int8")
    assert rows["executorch"]["max_abs_diff"] <= 1e-4  # fp32 against eager on the same random batch


def test_qat_prepares_with_executorchs_own_quantizer():
    """`qat.prepare` takes another runtime's quantizer: XNNPACK's QAT configuration fake-quantizes
    activations as signed int8 (the x86 quantizer's are uint8) and weights per channel."""
    pytest.importorskip("torchao")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)

    from mobilenet.train import qat

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
    prepared = qat.prepare(model, torch.randn(2, 3, 8, 8), quantizer)
    fake = {module.dtype for name, module in prepared.named_modules() if name.startswith("activation_post_process")}
    assert fake == {torch.int8} and torch.uint8 not in fake


def test_qat_for_executorch_writes_the_program_of_its_int8_model(cli, checkpoint, model_and_meta, test_images, tmp_path):
    """`mobilenet qat --runtime executorch`: XNNPACK's quantizer trained through; the folder holds the
    program, the fine-tuned weights and the report, and the program, run by ExecuTorch's runtime at its
    fixed batch, gives the checkpoint's classes (an independent oracle: the fp32 model in PyTorch)."""
    out = tmp_path / "qat"
    result = cli("qat", str(checkpoint), "--out", str(out), "--runtime", "executorch", "--pte-batch", "4",
                 "--images", "128", "--calibration-images", "32", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert sorted(p.name for p in out.iterdir()) == ["int8.pte", "qat.safetensors", "report.json"]
    assert [(row["method"], row["runtime"]) for row in report["rows"]] == [("PTQ", "executorch"), ("QAT", "executorch")]
    assert report["rows"][1]["program_agreement"] >= 0.99 and report["pte_batch"] == 4
    model, _ = model_and_meta
    with torch.no_grad():
        expected = model.eval()(test_images).argmax(1)
    got = torch.cat([run_pte(out / "int8.pte", test_images[i:i + 4]) for i in range(0, len(test_images), 4)])
    assert got.shape == (len(test_images), len(model_and_meta[1].classes))
    assert (got.argmax(1) == expected).float().mean() >= 0.75
    again = cli("qat", str(checkpoint), "--out", str(out), "--runtime", "executorch")  # nothing overwritten
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
