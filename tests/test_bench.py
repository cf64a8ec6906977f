"""The latency benchmark: what it reports and how it fails. Correctness, not speed: no timing is asserted."""

import json
import statistics

import numpy as np
import pytest
import torch

from mobilenet import bench, create_model
from mobilenet.cost import cost
from mobilenet.export import inference_model

ONNX = ["onnxruntime", "onnxruntime-int8"] if all(map(bench.available, ("onnx", "onnxruntime"))) else []


def test_json_report_through_the_command_line(cli):
    runtimes = ["eager", "channels_last", *ONNX]
    out = cli("bench", "mobilenet_v2", "--width", "0.25", "--resolution", "64", "--batch", "2",
              "--backend", ",".join(runtimes), "--iterations", "4", "--warmup", "1", "--json")  # --runtime's old name
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [r["runtime"] for r in report["results"]] == runtimes and report["skipped"] == []
    assert report["batch"] == 2 and report["resolution"] == 64 and report["iterations"] == 4
    assert report["model"]["name"] == "mobilenet_v2" and report["model"]["width_mult"] == 0.25
    for row in report["results"]:
        assert row["runs"] == 4
        assert 0 < row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]
        assert row["images_per_s"] == pytest.approx(2 / (row["median_ms"] / 1000))
    eager = report["results"][0]
    assert eager["latency_vs_eager"] == 1 and eager["max_abs_diff"] == 0
    for row in report["results"][1:]:  # every runtime ran the same model on the same input
        assert row["max_abs_diff"] < (0.1 if row["runtime"].endswith("int8") else 1e-4)
    env = report["environment"]
    assert env["cpu"] and env["threads"] >= 1 and env["versions"]["torch"]
    assert ("onnxruntime" in env["versions"]) == bool(ONNX)
    bound = report["compute_bound"]
    assert bound["flops"] == 2 * 2 * cost("mobilenet_v2", 64, width_mult=0.25).macs  # 2 FLOPs per mult-add, batch 2
    assert bound["limit_ms"] == pytest.approx(bound["flops"] / bound["matmul_gflops"] / 1e6)
    for row in report["results"]:  # the fp32 limit is given for fp32 runtimes only
        if row["runtime"].endswith("int8"):
            assert "of_compute_bound" not in row
        else:
            assert row["of_compute_bound"] == pytest.approx(bound["limit_ms"] / row["median_ms"])


@pytest.mark.parametrize("name, small_input", [("mobilenet_v1", False), ("mobilenet_v2", True),
                                               ("conv_mobilenet_v1", False)])
def test_counted_flops_are_the_analytic_mult_adds(name, small_input):
    """The benchmark counts what the model executes; the cost model derives it from the paper's formulas."""
    model = create_model(name, width_mult=0.5, small_input=small_input)
    expected = cost(name, 96, width_mult=0.5, small_input=small_input).macs
    assert bench.forward_flops(model, batch=3, resolution=96) == 2 * 3 * expected
    assert bench.forward_flops(inference_model(model), batch=1, resolution=96) == 2 * expected


def test_matrix_throughput_is_the_best_product_seen():
    probe = bench.MatmulProbe(size=256)
    probe.time(3)
    first = probe.best_s
    probe.time(2)
    assert 0 < probe.best_s <= first and probe.gflops == pytest.approx(2 * 256**3 / probe.best_s / 1e9)


def test_compile_runtime():
    """torch.compile needs a C++ compiler: measured when it works, reported as skipped when not."""
    model = create_model("mobilenet_v1", width_mult=0.25, num_classes=10).eval()
    report = bench.measure(model, resolution=32, runtimes="eager,compile", iterations=2, warmup=1)
    runtimes = {r["runtime"]: r for r in report["results"]}
    if "compile" in runtimes:
        assert runtimes["compile"]["max_abs_diff"] < 1e-4
    else:
        assert report["skipped"][0]["runtime"] == "compile" and report["skipped"][0]["reason"].startswith("failed")


def test_missing_packages_are_skipped_with_a_note(monkeypatch):
    import mobilenet.optional

    monkeypatch.setattr(mobilenet.optional, "available", lambda name: name != "onnxruntime")
    model = create_model("mobilenet_v1", width_mult=0.25, num_classes=10)
    report = bench.measure(model, resolution=32, runtimes="eager,onnxruntime,onnxruntime-int8", iterations=2, warmup=0)
    assert [r["runtime"] for r in report["results"]] == ["eager"]
    assert [s["runtime"] for s in report["skipped"]] == ["onnxruntime", "onnxruntime-int8"]
    assert all("needs onnxruntime, which is not installed: pip install 'mobilenet[export]'" in s["reason"]
               for s in report["skipped"])


def test_statistics_of_a_timing():
    seconds = [0.010, 0.012, 0.011, 0.030, 0.009, 0.010, 0.011]
    row = bench.Timing("eager", batch=4, seconds=seconds).to_dict()
    assert row["median_ms"] == pytest.approx(1000 * statistics.median(seconds))
    assert row["p10_ms"] == pytest.approx(1000 * np.percentile(seconds, 10))
    assert row["p90_ms"] == pytest.approx(1000 * np.percentile(seconds, 90))
    assert row["images_per_s"] == pytest.approx(4 / statistics.median(seconds))


@pytest.mark.parametrize("text,expected", [
    ("eager", ["eager"]),
    ("onnxruntime-int8, eager", ["onnxruntime-int8", "eager"]),
    ("eager,eager", ["eager"]),
    (None, list(bench.RUNTIMES)),
    ("all", list(bench.RUNTIMES)),
])
def test_parse_backends(text, expected):
    assert bench.parse_runtimes(text) == expected


@pytest.mark.parametrize("args,message", [
    (["--runtime", "eager,tensorrt"], "unknown runtime 'tensorrt'"),
    (["--batch", "0"], "--batch-size must be a positive integer"),
    (["--sweep", "--width", "0.5"], "--sweep measures the paper's grid"),
])
def test_bench_errors(cli, args, message):
    out = cli("bench", "mobilenet_v1", *args)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr, out.stderr


def test_missing_checkpoint(cli, tmp_path):
    out = cli("bench", tmp_path / "missing.safetensors", "--runtime", "eager")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "does not exist" in out.stderr


def test_sweep_writes_table_and_plot(tmp_path):
    from PIL import Image

    from mobilenet.cost import cost

    result = bench.sweep("mobilenet_v1", widths=(0.5, 0.25), resolutions=(64, 32), runtimes="eager,channels_last",
                         iterations=2, warmup=0)
    assert [(r["width"], r["resolution"]) for r in result["rows"]] == [(0.5, 64), (0.5, 32), (0.25, 64), (0.25, 32)]
    assert result["rows"][0]["macs"] == cost("mobilenet_v1", 64, width_mult=0.5).macs
    for row in result["rows"]:  # the limit is the model's counted work, which is its analytic mult-adds
        assert row["compute_bound"]["flops"] == 2 * row["macs"]
    paths = bench.write_sweep(result, tmp_path)
    assert sorted(p.suffix for p in paths) == [".json", ".md", ".png"]
    table = paths[1].read_text().splitlines()
    assert table[0].startswith("| model | million mult-adds") and len(table) == 2 + 4 and "| 0.25-32 |" in table[-1]
    last = {r["runtime"]: r["median_ms"] for r in result["rows"][3]["results"]}
    best = min(last, key=last.get)
    assert table[0].endswith("| fastest | fp32 compute bound ms |")
    assert table[-1].endswith(f"| {best} {last[best]:.2f} | {result['rows'][3]['compute_bound']['limit_ms']:.2f} |")
    assert json.loads(paths[0].read_text())["rows"][3]["results"][0]["runtime"] == "eager"
    with Image.open(paths[2]) as image:
        assert image.format == "PNG" and image.width > 300


@pytest.mark.parametrize("case", ["missing folder", "a file", "a folder in the way"])
def test_sweep_outputs_are_checked_before_measuring(cli, tmp_path, monkeypatch, case):
    """`bench --sweep --output DIR` once measured for a minute, then failed on a missing DIR."""
    monkeypatch.setattr(bench, "sweep", lambda *args, **kwargs: pytest.fail("measured before checking its output"))
    output = tmp_path / "nope"
    if case == "a file":
        output.write_text("mine")
    elif case == "a folder in the way":
        output.mkdir()
        (output / "latency_sweep_mobilenet_v1_batch1.json").mkdir()
    out = cli("bench", "mobilenet_v1", "--sweep", "--output", str(output))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert ("is a folder" if case == "a folder in the way" else "does not exist") in lines[0], lines[0]


@pytest.mark.skipif(not all(map(bench.available, ("onnx", "onnxruntime", "onnxscript", "openvino"))),
                    reason="the peers need onnxscript and openvino (installed by make install)")
def test_peer_rows_and_the_auto_row():
    """The peers are built as their users build them and compute the model's logits; `auto` runs
    one of the candidates it measured (fp32 only: no images of the model's own data here)."""
    from test_export import randomise_batchnorm

    model = randomise_batchnorm(create_model("mobilenet_v1", width_mult=0.25, num_classes=10))
    with torch.no_grad():
        model.classifier.weight.mul_(100)  # logits of a real size
    report = bench.measure(model, resolution=32, runtimes="eager,onnxruntime-default,openvino-default,auto",
                           iterations=2, warmup=1)
    rows = {r["runtime"]: r for r in report["results"]}
    assert set(rows) == {"eager", "onnxruntime-default", "openvino-default", "auto"}, report["skipped"]
    assert rows["onnxruntime-default"]["max_abs_diff"] < 1e-4 and rows["auto"]["max_abs_diff"] < 1e-4
    assert rows["auto"]["chosen"] in ("pytorch", "onnxruntime", "openvino")
    images = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # the benchmark's input
    with torch.no_grad():
        scale = model(images).abs().max().item()
    # OpenVINO's default is bf16 on CPUs with AMX or AVX-512 BF16: close, not equal, there
    assert scale > 1 and rows["openvino-default"]["max_abs_diff"] < 0.05 * scale


@pytest.mark.skipif(not all(map(bench.available, ("onnx", "onnxruntime"))), reason="needs onnxruntime")
def test_auto_row_of_a_checkpoint_judges_reduced_precisions_on_its_data(cli, tmp_path, monkeypatch):
    """From a checkpoint whose data is found, bf16 and INT8 compete in the auto row, and the row
    says what was chosen and, for a reduced precision, its agreement (>= 99%) with fp32."""
    from runs import tiny

    from mobilenet.export import choose, guard
    from mobilenet.train import train

    monkeypatch.delenv(choose.FORCE_VARIABLE)  # measured (conftest.py forces it elsewhere)

    train(tiny(tmp_path / "run"))  # its checkpoint records its data: three digit classes
    checkpoint = tmp_path / "run" / "last.safetensors"
    result = cli("bench", checkpoint, "--runtime", "auto", "--iterations", "2", "--warmup", "1", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["results"]
    names = [c.name for c in choose.candidates(True, choose._bf16())]
    assert row["runtime"] == "auto" and row["chosen"] in names and any(n.endswith("int8") for n in names)
    assert ("agreement" in row) == (row["chosen"].endswith(("int8", "bf16")))
    assert row.get("agreement", 1.0) >= guard.MIN_AGREEMENT


def test_the_auto_row_runs_its_choice_as_that_backends_row_does(monkeypatch, tmp_path):
    """The auto row once cost 4.05 ms against 2.63 for plain onnxruntime in the same run (its runner
    wrapped the session in tensors): it now times the chosen runtime's own runner."""
    import mobilenet.bench.latency as latency
    import mobilenet.export.choose as choose

    model = create_model("mobilenet_v1", width_mult=0.25, num_classes=3, small_input=True).eval()
    images = torch.randn(2, 3, 16, 16)

    def chose(*args, **kwargs):
        return (lambda x: pytest.fail("auto's own wrapper was timed")), choose.Decision(chosen="pytorch")

    monkeypatch.setattr(choose, "choose", chose)
    prepared = []
    real = latency.prepare

    def prepare(runtime, *args, **kwargs):
        prepared.append(runtime)
        return real(runtime, *args, **kwargs)

    monkeypatch.setattr(latency, "prepare", prepare)
    notes = {}
    runner = latency.prepare("auto", model, images, str(tmp_path), 1, notes=notes)
    with torch.no_grad():
        assert torch.allclose(torch.as_tensor(runner()), model(images), atol=1e-4)
    assert prepared == ["auto", "channels_last"] and notes["auto"].chosen == "pytorch"
