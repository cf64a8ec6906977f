"""`mobilenet study`: the grids the study names expand to, shards, a tiny study trained and measured
for real (table, JSON, PNGs), resume and skip, the report merge, and each bad input."""

import json

import pytest

from mobilenet import study
from mobilenet.study import STUDIES, Point, plan
from conftest import run_in_process

V1 = "mobilenet_v1"


def test_each_study_expands_to_the_papers_grid():
    """At Fashion-MNIST's 28 pixels: Table 7's rho = 1, 6/7, 5/7, 4/7 are 28, 24, 20, 16 (224, 192,
    160, 128 of 224); Figure 4 is every width with every resolution; the paper's figures beside."""
    def grid(name):
        return [(p.model, p.width, p.resolution(28)) for p in STUDIES[name][1]]

    assert grid("table4") == [("conv_mobilenet_v1", 1.0, 28), (V1, 1.0, 28)]
    assert grid("table5") == [(V1, 0.75, 28), ("shallow_mobilenet_v1", 1.0, 28)]
    assert grid("table6") == [(V1, w, 28) for w in (1.0, 0.75, 0.5, 0.25)]
    assert grid("table7") == [(V1, 1.0, r) for r in (28, 24, 20, 16)]
    assert grid("figure4") == [(V1, w, r) for w in (1.0, 0.75, 0.5, 0.25) for r in (28, 24, 20, 16)]
    assert grid("v1-v2") == [(V1, 0.75, 28), ("mobilenet_v2", 1.0, 28), (V1, 1.0, 28), ("mobilenet_v2", 1.4, 28)]
    assert grid("families") == [(V1, 0.5, 28), ("mobilenet_v3_large", 0.75, 28), ("mobilenet_v4_conv_small", 1.0, 28),
                                ("mobilenet_v2", 0.75, 28)]
    costs = [study.cost(p.model, 224, width_mult=p.width).macs / 1e6 for p in STUDIES["families"][1]]
    assert all(145 <= macs <= 215 for macs in costs)  # matched: 149, 155, 186, 209 million at 224
    assert [p.resolution(32) for p in STUDIES["table7"][1]] == [32, 27, 23, 18]  # CIFAR's side
    assert [p.resolution(224) for p in STUDIES["table7"][1]] == [224, 192, 160, 128]  # the paper's own
    assert Point(V1, 0.5).paper()["top1"] == 63.7  # Table 6
    assert Point("shallow_mobilenet_v1", 1.0).paper() == {"top1": 65.3, "macs_m": 307, "params_m": 2.9,
                                                         "source": "V1 Table 5"}
    assert Point(V1, 0.75, 160).paper()["top1"] == 65.3  # not in the paper's tables: TF-slim's checkpoint
    assert Point(V1, 0.75, 160).paper()["source"] == "TF-slim checkpoint"


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_shards_cover_every_run_exactly_once(n):
    seeds = [0, 1, 2]
    every = plan("figure4", 28, seeds)
    shards = [plan("figure4", 28, seeds, (k, n)) for k in range(1, n + 1)]
    assert len(every) == 48 and sorted(map(str, sum(shards, []))) == sorted(map(str, every))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # shared evenly


@pytest.fixture
def tiny_study(monkeypatch):
    """A study of two cheap points (V1 and the shallow V1 at width 0.25) for the machinery's tests."""
    monkeypatch.setitem(STUDIES, "tiny", ("A tiny study", (Point(V1, 0.25), Point("shallow_mobilenet_v1", 0.25, 128))))
    return ["--data", "digits", "--classes", "0,1,2", "--resolution", "16", "--batch-size", "32", "--lr", "0.02",
            "--no-progress"]


def test_a_tiny_study_trains_measures_shards_resumes_and_merges(tmp_path, monkeypatch, tiny_study):
    """Two machines' shards in two folders, each trained and measured for real (test top-1 of the
    last epoch, INT8 on ONNX Runtime, batch-1 latency of auto's runtime), merged by --report into
    one table with both points; a second run of a shard skips its measured point."""
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    done = run_in_process("study", "tiny", "--out", a, "--shard", "1/2", "--epochs", "1", *tiny_study)
    assert done.returncode == 0, done.stderr
    first = json.loads((a / "tiny-table.json").read_text())
    assert [row["point"] for row in first["rows"]] == ["mobilenet_v1-0.25-16"]
    assert "Not measured yet: shallow_mobilenet_v1-0.25-9" in (a / "tiny.md").read_text()
    result = json.loads((a / "mobilenet_v1-0.25-16-seed0" / "result.json").read_text())
    metrics = [json.loads(line) for line in (a / "mobilenet_v1-0.25-16-seed0" / "metrics.jsonl").read_text().splitlines()]
    assert result["top1"] == metrics[-1]["test_top1"] and result["epochs"] == 1 and result["resolution"] == 16
    assert result["latency_ms"] > 0 and result["runtime"]
    assert result["macs"] == study.cost(V1, 16, width_mult=0.25, num_classes=3, small_input=True).macs
    assert "int8_top1" in result["int8"] or "skipped" in result["int8"]

    done = run_in_process("study", "tiny", "--out", b, "--shard", "2/2", "--epochs", "1", *tiny_study)
    assert done.returncode == 0, done.stderr
    done = run_in_process("study", "tiny", "--report", a, b, "--out", merged)
    assert done.returncode == 0, done.stderr
    rows = json.loads((merged / "tiny-table.json").read_text())["rows"]
    assert [row["point"] for row in rows] == ["mobilenet_v1-0.25-16", "shallow_mobilenet_v1-0.25-9"]
    assert rows[1]["paper"] == {}  # the shallow model at 128 is not in the paper
    for name in ("tiny.md", "tiny-top1-vs-macs.png", "tiny-top1-vs-params.png", "tiny-top1-vs-latency.png"):
        assert (merged / name).stat().st_size > 0
    assert "| mobilenet_v1 | 0.25 | 16 | 50.6 | 41 | 0.5 |" in (merged / "tiny.md").read_text()  # Table 6's row

    def no_training(*args, **kwargs):
        raise AssertionError("a measured point was trained again")

    monkeypatch.setattr(study, "train", no_training)
    done = run_in_process("study", "tiny", "--out", a, "--shard", "1/2", "--epochs", "1", *tiny_study)
    assert done.returncode == 0 and "measured already, skipped" in done.stdout, done.stderr


def test_a_stopped_point_resumes_where_it_stopped(tmp_path, monkeypatch, tiny_study):
    """A point whose training stopped after its first epoch (a state, no result) is resumed, not
    started again: its second epoch follows the first."""
    out = tmp_path / "study"
    two = ["--epochs", "2", *tiny_study]
    assert run_in_process("study", "tiny", "--out", out, "--shard", "9/9", *two).returncode == 0  # no runs here
    folder = out / "mobilenet_v1-0.25-16-seed0"
    options = {"data": "digits", "classes": ["0", "1", "2"], "epochs": 2, "batch_size": 32, "lr": 0.02}
    study.train(study.point_config(Point(V1, 0.25), 0, 16, folder, options), stop_after=1, progress=False)
    resumed = []
    real = study.train
    monkeypatch.setattr(study, "train", lambda config, **kw: resumed.append(kw.get("resume")) or real(config, **kw))
    monkeypatch.setattr(study, "batch1_latency", lambda checkpoint: (1.0, "pytorch"))  # measured in the test above
    monkeypatch.setattr(study, "int8_accuracy", lambda checkpoint: {"skipped": "not this test's subject"})
    done = run_in_process("study", "tiny", "--out", out, "--shard", "1/2", "--epochs", "3", *tiny_study)
    assert done.returncode == 2 and "other training options" in done.stderr  # the study's recipe is fixed
    done = run_in_process("study", "tiny", "--out", out, "--shard", "1/2", *two)
    assert done.returncode == 0, done.stderr
    assert resumed == [True]
    epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


@pytest.mark.parametrize("args, text", [
    (["table9", "--data", "digits", "--out", "{tmp}/s"], "unknown study 'table9'; choose one of: table4"),
    (["table7", "--data", "digits", "--resolution", "12", "--out", "{tmp}/s"],
     "study table7 on 12-pixel data: mobilenet_v1-1-7: resolution 7 is too small"),
    (["table5", "--data", "digits", "--out", "{tmp}/other"], "holds the study 'table4' of 'digits', not 'table5'"),
    (["table4", "--data", "digits", "--shard", "3/2", "--out", "{tmp}/s"], "--shard 3/2: K must be from 1 to N"),
    (["table4", "--data", "digits", "--shard", "one", "--out", "{tmp}/s"], "--shard must be K/N"),
    (["table4", "--data", "digits", "--width", "0.5", "--out", "{tmp}/s"], "the study sets width for each point"),
    (["table4", "--report", "{tmp}/other", "--epochs", "3"], "--report merges finished study folders"),
    (["table4", "--report", "{tmp}/nothing"], "holds no study"),
], ids=["unknown", "strides", "other-study", "shard-range", "shard-form", "decided-option", "report-options",
        "report-empty"])
def test_bad_study_input_is_one_line_and_overwrites_nothing(tmp_path, args, text):
    other = tmp_path / "other"
    other.mkdir()
    record = json.dumps({"study": "table4", "data": "digits", "native_resolution": 32, "recipe": {}})
    (other / "study.json").write_text(record)
    (tmp_path / "nothing").mkdir()
    done = run_in_process("study", *[arg.replace("{tmp}", str(tmp_path)) for arg in args])
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and text in lines[0], done.stderr
    assert (other / "study.json").read_text() == record and not (tmp_path / "s").exists()
