"""`make fashion`'s wiring on a tiny IDX set: the recipe trains, resumes, quantizes and writes its
results (the real run takes an hour and is not a test)."""

import json
import runpy
import subprocess
from pathlib import Path

from test_mnist import write_idx_set

from mobilenet.optional import available

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "fashion_mnist.py"


def test_make_fashion_wiring(tmp_path, capsys):
    """The script's main() in this process (started as a command it is the same function, and the
    command line's own plumbing is tested in test_cli.py): two process starts less, a third of its time."""
    write_idx_set(tmp_path / "data" / "fashion-mnist")
    make = subprocess.run(["make", "-n", "fashion"], cwd=SCRIPT.parent.parent, capture_output=True, text=True)
    assert "benchmarks/fashion_mnist.py" in make.stdout  # the target runs this script
    main = runpy.run_path(str(SCRIPT))["main"]
    command = ["--out", str(tmp_path / "run"), "--results", str(tmp_path / "results"),
               "--data-root", str(tmp_path / "data"), "--epochs", "1", "--calibration-images", "16"]
    assert main(command) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("test top-1 ") and "% (last epoch, 1 epochs) in " in last and "minutes" in last
    assert "PFLOP of training (+" in last  # the compute, counted by the product
    result = json.loads((tmp_path / "results" / "fashion_mnist.json").read_text())
    assert result["recipe"]["model"] == "mobilenet_v1" and result["recipe"]["data"] == "fashion-mnist"
    assert [m["epoch"] for m in result["epochs"]] == [1] and result["environment"]["cpu"]
    assert f"{100 * result['epochs'][-1]['test_top1']:.2f}%" in last
    if available("onnxruntime"):
        assert result["int8"]["images"] == 40 and 0 <= result["int8"]["agreement"] <= 1
    assert (tmp_path / "results" / "fashion_mnist.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "results" / "fashion_mnist-pflop.png").read_bytes()[:4] == b"\x89PNG"  # against compute
    assert "Last epoch's test top-1" in (tmp_path / "results" / "fashion_mnist.md").read_text()
    assert main(command) == 0  # the same command continues
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("test top-1")
