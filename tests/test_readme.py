"""The README's code runs as written: every Python block, in order, in a new interpreter (as a user
pastes them), and the quick start's commands for a folder of one's own images (through the
command's own entry point, in this process), on a folder made here in the layout it shows."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import run_in_process

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_every_python_block_runs(tmp_path):
    code = "\n".join(blocks("python"))
    assert "import mobilenet" in code and "mobilenet.export." in code
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs" / "d2" / "last.safetensors").exists()


def test_the_quick_start_on_a_folder_of_ones_own(tmp_path):
    section = README.read_text().split("### Train on your own images", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for block in re.findall(r"^```\n(.*?)^```", section, flags=re.S | re.M)
                for line in block.splitlines() if line.startswith(".venv/bin/mobilenet ")]
    assert [c.split()[1] for c in commands] == ["train", "eval", "predict", "export", "train"]
    rng = np.random.default_rng(0)
    for split, count in (("train", 72), ("val", 8)):  # one batch of the default 128 a training epoch
        for name in ("cat", "dog"):
            (tmp_path / "mine" / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(
                    tmp_path / "mine" / split / name / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    for command in commands:
        args = shlex.split(command)[1:]
        done = run_in_process(*args, *(["--no-progress"] if args[0] == "train" else []), cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr)
    assert (tmp_path / "mine.onnx").exists() and (tmp_path / "runs" / "mine" / "curves.png").exists()
