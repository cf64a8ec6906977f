"""Shipping a model: BatchNorm folding, ONNX, torch.export programs, INT8, and the export command.

Every exported file is checked here with the runtime's own API (onnx, onnxruntime, torch.export),
against the PyTorch model it came from, not with the package's helpers.
"""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobilenet import create_model
from mobilenet.checkpoint import ModelMeta, save_checkpoint
from mobilenet.data import load_dataset
from mobilenet.export import MissingPackage, export_checkpoint, export_onnx, export_pt2, inference_model, runtime_model

onnx = pytest.importorskip("onnx", reason="the export extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed")

from mobilenet.export.guard import MIN_AGREEMENT  # noqa: E402  (after the skips: they need the export extra)
from mobilenet.export.int8 import integer_kernels_saturate  # noqa: E402

MODELS = ["mobilenet_v1", "mobilenet_v2", "conv_mobilenet_v1", "mobilenet_v3_small"]


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (a fresh BatchNorm is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


def ort_logits(path, images) -> np.ndarray:
    """Logits from a plain ONNX Runtime session, independent of the package's helpers."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.asarray(images, dtype=np.float32)})[0]


# --- BatchNorm folding -----------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_folding_keeps_the_function(name):
    model = randomise_batchnorm(create_model(name, width_mult=0.25, num_classes=10))
    fused = inference_model(model)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected, got = model(x), fused(x)
    assert relative_error(got, expected) <= 1e-5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is not None for c in convs)
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not fused.training and not any(p.requires_grad for p in fused.parameters())
    # the original is untouched: still a BatchNorm after every convolution built without a bias (all but
    # V3's squeeze-and-excitation and head), still the same outputs
    plain = sum(isinstance(m, nn.Conv2d) and m.bias is None for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == plain > 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_fold_matches_torchs_own_fusion():
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from mobilenet.export import fold_conv_bn

    model = randomise_batchnorm(create_model("mobilenet_v2", width_mult=0.25, num_classes=10), seed=1)
    block = model.features[2].depthwise  # a depthwise ConvBNAct
    ours = fold_conv_bn(block.conv, block.bn)
    theirs = fuse_conv_bn_eval(block.conv, block.bn)
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.bias, theirs.bias, rtol=1e-6, atol=1e-7)
    assert ours.groups == block.conv.groups == block.conv.in_channels


# --- ONNX -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    """A small V2 with non-trivial BatchNorm, its checkpoint metadata and some inputs."""
    model = randomise_batchnorm(create_model("mobilenet_v2", width_mult=0.25, num_classes=5))
    meta = ModelMeta(config=model.config, classes=["ant", "bee", "cat", "dog", "eel"], resolution=64,
                     mean=(0.4, 0.45, 0.5), std=(0.2, 0.25, 0.3), extra={"crop_fraction": 0.875})
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return model, meta, images


def test_onnx_round_trip_with_a_dynamic_batch(small, tmp_path):
    model, meta, images = small
    path = tmp_path / "m.onnx"
    check = export_onnx(model, path, images, meta=meta)
    assert check.max_abs_diff <= 1e-4 and check.batch_sizes == (1, 3)
    graph = onnx.load(str(path)).graph
    batch_dim = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")  # symbolic, not fixed
    ops = {node.op_type for node in graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    with torch.no_grad():
        expected = model(images).numpy()
    np.testing.assert_allclose(ort_logits(path, images[:1]), expected[:1], atol=1e-4, rtol=0)
    np.testing.assert_allclose(ort_logits(path, images), expected, atol=1e-4, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary file left


def test_onnx_metadata(small, tmp_path):
    model, meta, images = small
    path = tmp_path / "m.onnx"
    export_onnx(model, path, images, meta=meta)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["classes"]) == meta.classes
    assert json.loads(props["mean"]) == list(meta.mean) and json.loads(props["std"]) == list(meta.std)
    assert int(props["resolution"]) == 64
    assert json.loads(props["config"]) == model.config.to_dict()
    assert "mean" in props["preprocessing"]


def test_a_check_that_fails_leaves_nothing(small, tmp_path, monkeypatch):
    """If the written file computes something else than PyTorch, the export fails and the old file stays."""
    import mobilenet.export.onnx as onnx_export

    model, meta, images = small
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")

    def wrong(model, channels_last=True):  # a fold that silently breaks the model
        fused = inference_model(model, channels_last)
        fused.classifier.bias.data += 0.01
        return fused

    monkeypatch.setattr(onnx_export, "inference_model", wrong)
    with pytest.raises(ValueError, match="disagrees with PyTorch"):
        export_onnx(model, path, images, meta=meta)
    assert path.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


# --- the fastest runtime, for eval and predict ---------------------------------------------------

@pytest.mark.parametrize("runtime", ["onnxruntime", "pytorch"])
def test_runtime_model_computes_the_models_function(small, runtime):
    model, _, images = small
    fast, name = runtime_model(model, 64, runtime)
    assert name == runtime
    with torch.no_grad():
        expected, got = model(images), fast(images)  # batch 3: the session's batch is dynamic
    assert isinstance(got, torch.Tensor) and got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4, rtol=0)


def test_runtime_names_are_checked():
    import mobilenet.export.runtime as runtime

    assert runtime.resolve_runtime("auto") == "auto" and runtime.resolve_runtime("openvino") == "openvino"
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        runtime.resolve_runtime("tensorrt")


def test_runtime_model_checks_itself(small, monkeypatch):
    """A session that computes something else than the model is refused, as an export is."""
    import mobilenet.export.choose as choose

    def wrong(model, channels_last=True):
        fused = inference_model(model, channels_last)
        fused.classifier.bias.data += 0.01
        return fused

    monkeypatch.setattr(choose, "inference_model", wrong)  # what builds every runtime's model
    with pytest.raises(ValueError, match="disagrees with PyTorch"):
        runtime_model(small[0], 64, "onnxruntime")


def test_pt2_round_trip(small, tmp_path):
    model, meta, images = small
    path = tmp_path / "m.pt2"
    check = export_pt2(model, path, images, meta=meta)
    assert check.max_abs_diff <= 1e-4
    extra = {"mobilenet.json": ""}
    program = torch.export.load(str(path), extra_files=extra)
    assert json.loads(json.loads(extra["mobilenet.json"])["classes"]) == meta.classes
    with torch.no_grad():
        expected = model(images)
        torch.testing.assert_close(program.module()(images[:1]), expected[:1], atol=1e-4, rtol=0)
        torch.testing.assert_close(program.module()(images), expected, atol=1e-4, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt2"]


# --- INT8 ----------------------------------------------------------------------------------------

def test_int8_export_reports_agreement_and_accuracy(digits_checkpoint, tmp_path):
    path, model = digits_checkpoint
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export_checkpoint(path, fp32, "onnx", calibration_data="digits")
    report = export_checkpoint(path, int8, "onnx", int8=True, calibration_data="digits", calibration_images=128,
                               min_agreement=0)  # the figures, whatever the guard makes of them (tested below)
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    assert report["images"] == 360 and report["calibration_images"] == 128
    assert all(0 <= report[key] <= 1 for key in ("agreement", "fp32_top1", "int8_top1"))
    assert report["fp32_check"]["max_abs_diff"] <= 1e-4
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    props = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert json.loads(props["classes"]) == [str(i) for i in range(10)] and "int8" in props["quantization"]
    # The reported figures, recomputed from the files with ONNX Runtime and from PyTorch
    test = load_dataset("digits", "test")
    mean, std = torch.tensor(test.mean).view(1, 3, 1, 1), torch.tensor(test.std).view(1, 3, 1, 1)
    x = ((test.images.float() / 255 - mean) / std).numpy()
    top8, top32 = ort_logits(int8, x).argmax(1), ort_logits(fp32, x).argmax(1)
    with torch.no_grad():
        top_torch = model(torch.from_numpy(x)).argmax(1).numpy()
    labels = test.labels.numpy()
    assert report["int8_top1"] == pytest.approx((top8 == labels).mean(), abs=1e-9)
    assert report["fp32_top1"] == pytest.approx((top32 == labels).mean(), abs=1e-9)
    assert report["agreement"] == pytest.approx((top8 == top32).mean(), abs=1e-9)
    assert (top32 == top_torch).mean() >= 359 / 360  # fp32 ONNX is PyTorch, up to a tie
    # a trained model survives quantization on every CPU: at 0.9 this passed a file that ONNX Runtime's
    # saturating AVX2 kernels ran at 95.6% agreement (the demo model), 100% with 7-bit weights there
    assert report["fp32_top1"] > 0.8 and report["agreement"] >= MIN_AGREEMENT
    assert ("7 bits" in props["quantization"]) == integer_kernels_saturate()


def test_the_saturation_probe_finds_the_cpus_without_vnni():
    """ONNX Runtime's fused u8 x s8 kernels add pairs of products in 16 bits on x86 CPUs without VNNI
    (its documentation's reason for reduce_range), exactly on those with it: the measured probe must
    agree with the instruction set the kernel has to work with."""
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() not in ("x86_64", "AMD64") or not cpuinfo.is_file():
        pytest.skip("the probe's oracle reads the x86 flags of /proc/cpuinfo")
    flags = set(next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split())
    assert "avx2" in flags, "an x86-64 CPU of these machines has AVX2 at least"
    assert integer_kernels_saturate() == (not flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


# --- the command line --------------------------------------------------------------------------

def test_export_command_writes_a_checked_file(cli, digits_checkpoint, tmp_path):
    path, _ = digits_checkpoint
    out = cli("export", path, "--output", tmp_path / "m.onnx", "--calibration-data", "digits", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["check"]["max_abs_diff"] <= 1e-4 and report["check"]["inputs"] == "8 digits test images"
    assert report["bytes"] == (tmp_path / "m.onnx").stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def _unwritable(tmp_path):
    """A file name in a folder this process cannot write to (root writes anywhere but sysfs)."""
    if os.geteuid() == 0:
        return "/sys/mobilenet-test.onnx"
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return folder / "m.onnx"


@pytest.mark.parametrize("case,message", [
    ("missing folder", "does not exist"),
    ("not writable", "not writable"),
    ("output is a folder", "is a folder"),
    ("not a checkpoint", "not a readable safetensors checkpoint"),
    ("unknown format", "invalid choice: 'caffe2'"),
    ("int8 of pt2", "INT8 quantization is for onnx, openvino, executorch, tflite or coreml, not pt2"),
    ("int8 without data", "--int8 needs calibration data"),
])
def test_export_errors(cli, digits_checkpoint, tmp_path, case, message):
    checkpoint, _ = digits_checkpoint  # saved outside a run: its metadata names no training data
    target = tmp_path / "m.onnx"
    if case == "not writable":
        target = _unwritable(tmp_path)
    args = {
        "missing folder": [checkpoint, "--output", tmp_path / "nope" / "m.onnx"],
        "not writable": [checkpoint, "--output", target],
        "output is a folder": [checkpoint, "--output", tmp_path],
        "not a checkpoint": [__file__, "--output", target],
        "unknown format": [checkpoint, "--format", "caffe2", "--output", target],
        "int8 of pt2": [checkpoint, "--int8", "--output", tmp_path / "m.pt2"],
        "int8 without data": [checkpoint, "--int8", "--output", target],
    }[case]
    before = sorted(tmp_path.rglob("*"))
    out = cli("export", *args)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr, out.stderr
    assert sorted(tmp_path.rglob("*")) == before and not os.path.exists(target)  # nothing written or left


def test_missing_onnxruntime_is_one_line(digits_checkpoint, tmp_path):
    """Without onnxruntime the package still imports and `export` says what to install."""
    checkpoint, _ = digits_checkpoint
    code = ("import sys; sys.modules['onnxruntime'] = None\n"  # makes `import onnxruntime` fail
            "from mobilenet.cli import main\n"
            f"sys.exit(main(['export', {str(checkpoint)!r}, '--output', {str(tmp_path / 'm.onnx')!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "onnxruntime" in lines[0] and "mobilenet[export]" in lines[0], out.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_package_error_names_the_extra(monkeypatch):
    import mobilenet.optional as optional

    monkeypatch.setattr(optional, "available", lambda name: name != "onnx")
    with pytest.raises(MissingPackage, match=r"needs onnx, which is not installed: pip install 'mobilenet\[export\]'"):
        optional.require("onnx", "onnxruntime", purpose="ONNX export")


@pytest.mark.parametrize("format,suffix,extra,package", [("executorch", ".pte", "executorch", "executorch"),
                                                          ("tflite", ".tflite", "tflite", "litert_torch"),
                                                          ("coreml", ".mlpackage", "coreml", "coremltools")])
def test_phone_format_without_its_extra_says_what_to_install(cli, digits_checkpoint, tmp_path, monkeypatch, format,
                                                              suffix, extra, package):
    """The phone converters stay out of `make install`: without one, `export` names its extra (the
    exports themselves are tested in tests/ondevice, in each converter's own environment)."""
    import mobilenet.optional as optional

    real = optional.available
    monkeypatch.setattr(optional, "available", lambda name: name != package and real(name))
    checkpoint, _ = digits_checkpoint
    out = cli("export", str(checkpoint), "--format", format, "--output", str(tmp_path / f"m{suffix}"))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert f"pip install 'mobilenet[{extra}]'" in lines[0] and "make test-ondevice" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,message", [(["--format", "tflite", "--output", "m.onnx"], "give --output NAME.tflite"),
                                          (["--format", "onnx", "--output", "m.onnx", "--batch-size", "4"],
                                           "--batch-size is for the phone formats")])
def test_phone_export_arguments_are_checked_first(cli, digits_checkpoint, tmp_path, args, message):
    checkpoint, _ = digits_checkpoint
    out = cli("export", str(checkpoint), *args, cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr
    assert list(tmp_path.iterdir()) == []


# --- outputs that match their names -------------------------------------------------------------

def test_the_outputs_suffix_decides_the_format(cli, digits_checkpoint, tmp_path):
    """No --format: .xml is an OpenVINO IR (with its .bin), .onnx ONNX, in any case; a --format that
    contradicts the suffix, or a suffix that names no format, is refused and the IR of that name kept."""
    pytest.importorskip("openvino")
    checkpoint, _ = digits_checkpoint
    assert cli("export", str(checkpoint), "--output", str(tmp_path / "m.xml")).returncode == 0
    assert (tmp_path / "m.xml").read_bytes().startswith(b"<?xml") and (tmp_path / "m.bin").stat().st_size > 100_000
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for args, message in [(["--format", "onnx", "--output", "m.xml"], "--format onnx writes a .onnx file, but the "
                                                                          "output m.xml says openvino"),
                          (["--output", "m.model"], "cannot tell the format from the name m.model")]:
        out = cli("export", str(checkpoint), *args, cwd=tmp_path)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert cli("export", str(checkpoint), "--output", "M.ONNX", cwd=tmp_path).returncode == 0
    assert cli("export", str(checkpoint), "--output", "M.XML", cwd=tmp_path).returncode == 0
    onnx.checker.check_model(str(tmp_path / "M.ONNX"))
    assert (tmp_path / "M.XML").read_bytes().startswith(b"<?xml") and (tmp_path / "M.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["M.ONNX", "M.XML", "M.bin", "m.bin", "m.xml"]


@pytest.mark.parametrize("kind", ["symbolic link", "named pipe", "device"])
def test_an_output_that_is_not_a_regular_file_is_refused(cli, digits_checkpoint, tmp_path, kind):
    """A link, a FIFO or a device node is never replaced by a regular file (nor opened: a FIFO would block)."""
    from mobilenet.files import check_output_path

    checkpoint, _ = digits_checkpoint
    victim = tmp_path / "victim.onnx"
    victim.write_bytes(b"keep me")
    target = tmp_path / "m.onnx"
    if kind == "symbolic link":
        target.symlink_to(victim)
    elif kind == "named pipe":
        os.mkfifo(target)
    else:  # a device node cannot be made without privileges; /dev/null is one
        with pytest.raises(ValueError, match="/dev/null is a device, not a regular file"):
            check_output_path("/dev/null")
        return
    out = cli("export", str(checkpoint), "--output", str(target), timeout=60)
    assert out.returncode == 2 and f"is a {kind}, not a regular file" in out.stderr, out.stderr
    assert victim.read_bytes() == b"keep me" and (target.is_symlink() if kind == "symbolic link" else
                                                  not target.is_file())


def test_an_ir_is_replaced_as_a_pair_or_not_at_all(digits_checkpoint, tmp_path, monkeypatch):
    """The .bin and .xml of an IR are renamed together: if the second rename fails (a crash between
    the two), the first is undone, so the old pair stays whole, and no temporary file is left."""
    pytest.importorskip("openvino")
    import mobilenet.files as files

    checkpoint, model = digits_checkpoint
    xml = tmp_path / "m.xml"
    export_checkpoint(checkpoint, xml)
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    from mobilenet.checkpoint import load_checkpoint

    changed, meta = load_checkpoint(checkpoint, with_meta=True)
    with torch.no_grad():  # another model, so that both new files differ from the old ones
        changed.classifier.bias.add_(1.0)
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, changed, meta)
    old[other.name] = other.read_bytes()
    real, calls = os.replace, []

    def replace(src, dst):  # os.replace everywhere (files.os is the os module)
        calls.append(Path(dst).name)
        if Path(dst) == xml:
            raise OSError("killed between the renames")
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(OSError, match="killed between"):
        export_checkpoint(other, xml)
    monkeypatch.undo()
    assert calls[-3:] == ["m.bin", "m.xml", "m.bin"]  # the .bin replaced, the .xml failed, the .bin restored
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old  # the old pair, whole; nothing else
    export_checkpoint(other, xml)
    new = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert new["m.xml"] != old["m.xml"] and new["m.bin"] != old["m.bin"]


def test_one_accuracy_guard_for_int8_exports(cli, digits_checkpoint, tmp_path, monkeypatch):
    """An INT8 file below the guard's top-1 agreement is not written (the figure and the threshold in
    one line); --min-agreement moves the threshold; --force writes it with a warning that names the figure."""
    import mobilenet.export.int8 as int8
    from mobilenet.export.guard import MIN_AGREEMENT

    checkpoint, _ = digits_checkpoint
    real = int8.compare
    monkeypatch.setattr(int8, "compare", lambda *args: (0.9625, *real(*args)[1:]))
    target = tmp_path / "q.onnx"
    args = [str(checkpoint), "--int8", "--calibration-data", "digits", "--calibration-images", "32",
            "--output", str(target)]
    out = cli("export", *args)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and not target.exists(), out.stderr
    assert "top-1 agreement with fp32 96.25%" in lines[0] and f"{100 * MIN_AGREEMENT:.2f}% required" in lines[0]
    assert list(tmp_path.iterdir()) == []
    assert cli("export", *args, "--min-agreement", "0.96").returncode == 0 and target.exists()
    target.unlink()
    out = cli("export", *args, "--force")
    assert out.returncode == 0 and target.exists() and "warning" in out.stderr and "96.25%" in out.stderr
    out = cli("export", *args, "--min-agreement", "98")
    assert out.returncode == 2 and "a fraction from 0 to 1" in out.stderr


def test_v3_exports_with_the_onnx_hard_activations_and_runs_as_pytorch_does(tmp_path):
    """V3-Small's hard-swish and hard-sigmoid become ONNX's own HardSwish and HardSigmoid operators
    (not decomposed), the squeeze-and-excitation a Mul; the file, read by a plain ONNX Runtime
    session, gives PyTorch's logits, and so do torch.export's program and (if installed) OpenVINO's IR."""
    from mobilenet.checkpoint import load_checkpoint
    from mobilenet.optional import available
    from mobilenet.train import train
    from runs import tiny

    out = tmp_path / "run"
    train(tiny(out, model="mobilenet_v3_small", epochs=1), progress=False)
    checkpoint = out / "last.safetensors"
    model, meta = load_checkpoint(checkpoint, with_meta=True)
    images = torch.randn(4, 3, meta.resolution, meta.resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval()(images)
    export_checkpoint(checkpoint, tmp_path / "m.onnx")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert {"HardSwish", "HardSigmoid", "Mul", "GlobalAveragePool"} <= ops
    assert np.abs(ort_logits(tmp_path / "m.onnx", images) - expected.numpy()).max() <= 1e-4
    export_checkpoint(checkpoint, tmp_path / "m.pt2")
    from mobilenet.export import load_pt2

    with torch.no_grad():
        program, _ = load_pt2(tmp_path / "m.pt2")
        torch.testing.assert_close(program.module()(images), expected, rtol=1e-4, atol=1e-4)
    if available("openvino"):
        import openvino

        export_checkpoint(checkpoint, tmp_path / "m.xml")
        compiled = openvino.Core().compile_model(str(tmp_path / "m.xml"), "CPU")
        assert np.abs(compiled(images.numpy())[0] - expected.numpy()).max() <= 1e-4
