"""No input ends in a traceback, no output replaces an input: each case a demanding user or a
security reviewer found, run in-process through `mobilenet.cli.main` (the same code as the
command; end-to-end runs in a new process are in test_cli.py and test_cli_train.py)."""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from mobilenet.optional import available
from mobilenet.train import train
from conftest import run_in_process
from runs import tiny

ONNX = available("onnx") and available("onnxruntime")


pytestmark = pytest.mark.xdist_group("test_cli_inputs")  # one pytest-xdist worker: `run` is built once


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished two-epoch run folder."""
    out = tmp_path_factory.mktemp("inputs") / "run"
    train(tiny(out), progress=False)
    return out


def cli(capsys, *args):
    """(exit status, stdout, stderr) of the command, run as conftest's `cli` fixture runs it."""
    capsys.readouterr()  # what earlier steps printed
    done = run_in_process(*args)
    return done.returncode, done.stdout, done.stderr


def refused(capsys, text, *args):
    """The command ends with one line on stderr naming `text`, exit status 2."""
    code, out, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    assert text in lines[0], lines[0]
    return lines[0]


# --- outputs never replace inputs -----------------------------------------------------------

def test_no_command_writes_its_output_over_its_input(capsys, run, tmp_path):
    ckpt, state = run / "last.safetensors", run / "state.safetensors"
    before = {p: p.read_bytes() for p in (ckpt, state)}
    refused(capsys, "is the checkpoint it is made from", "export", ckpt, "--format", "pt2", "--output", ckpt)
    linked = tmp_path / "same-inode.safetensors"
    os.link(ckpt, linked)  # another name for the same file
    refused(capsys, "is the checkpoint it is made from", "export", ckpt, "--format", "pt2", "--output", linked)
    refused(capsys, "is a mobilenet training state", "export", ckpt, "--format", "pt2", "--output", state)
    refused(capsys, "is the checkpoint it is made from", "eval", ckpt, "--data", "digits", "--plot", ckpt)
    refused(capsys, "is a mobilenet checkpoint", "eval", ckpt, "--data", "digits", "--plot", run / "best.safetensors")
    source = tmp_path / "a.pth"
    source.write_bytes(b"weights")
    refused(capsys, "is the weights file it is made from", "convert", source, "--from", "torchvision", "--output", source)
    refused(capsys, "is a mobilenet training state", "convert", source, "--from", "torchvision", "--output", state)
    assert source.read_bytes() == b"weights"
    assert all(p.read_bytes() == content for p, content in before.items())


# --- every value read is checked: one line, exit 2 --------------------------------------------

@pytest.mark.parametrize("flags, text", [
    (["--warmup-epochs", "inf"], "warmup epochs must be a finite number"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--schedule", "exponential", "--lr-gamma", "-1"], "lr gamma"),
    (["--momentum", "1.5"], "momentum must be in [0, 1)"),
    (["--dropout", "2"], "dropout must be in [0, 1)"),
    (["--resolution", "100000"], "resolution must be a whole number of pixels from 1 to 4096"),
    (["--val-split", "1"], "val split must be a fraction in [0, 1)"),
    (["--resolution", "24", "--min-resolution", "24"], "min resolution (24) must be below the resolution (24)"),
    (["--min-resolution", "32"], "--min-resolution 32 must be below the resolution (32)"),  # the data's side
    (["--min-resolution", "16"], "resolution 16 is too small for mobilenet_v1"),
    (["--min-resolution", "16", "--resize-start", "0.9", "--resize-end", "0.5"], "resize start and end"),
], ids=["warmup-inf", "lr-nan", "negative-gamma", "momentum", "dropout", "huge-resolution", "val-split",
        "min-resolution-given", "min-resolution-data", "min-resolution-strides", "resize-ramp"])
def test_numeric_training_options_are_checked_before_any_work(capsys, tmp_path, flags, text):
    refused(capsys, text, "train", "--out", tmp_path / "run", *flags)
    assert not (tmp_path / "run").exists()


def damaged_checkpoint(run, tmp_path, **changes) -> str:
    """The run's checkpoint with its metadata fields replaced by `changes` (JSON strings)."""
    with safe_open(str(run / "last.safetensors"), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    path = tmp_path / f"damaged-{'-'.join(changes)}.safetensors"
    save_file(tensors, path, metadata={**metadata, **changes})
    return str(path)


@pytest.mark.parametrize("changes, text", [
    ({"config": json.dumps({"name": "mobilenet_v1", "width_mult": 0.25, "num_classes": 3, "colour": "red"})},
     "unknown model configuration options: colour"),
    ({"config": "[1, 2]"}, "a model configuration is a JSON object, got list"),
    ({"config": json.dumps({"name": "resnet", "width_mult": 1, "num_classes": 3, "small_input": False,
                            "activation": "relu", "dropout": 0})}, "config must name one of the models"),
    ({"resolution": "0"}, "resolution must be a whole number of pixels"),
    ({"mean": "[0.5, 0.5]"}, "mean must be 3 finite numbers (one per input channel)"),
    ({"std": "[0.5, 0.0, 0.5]"}, "std must be positive"),
    ({"classes": json.dumps(["0", "1"])}, "3 outputs but 2 class names"),
    ({"extra": "[]"}, "extra must be a JSON object"),
], ids=["unknown-key", "config-list", "unknown-model", "resolution-0", "two-means", "zero-std", "more-logits", "extra-list"])
def test_checkpoint_metadata_is_validated(capsys, run, tmp_path, changes, text):
    path = damaged_checkpoint(run, tmp_path, **changes)
    for command in (["eval", path, "--data", "digits"], ["predict", path, "x.png"], ["export", path, "--format", "pt2",
                                                                                     "--output", tmp_path / "x.pt2"]):
        line = refused(capsys, text, *command)
        assert "damaged checkpoint metadata" in line and path in line


def test_a_resumed_run_validates_its_files(capsys, tmp_path):
    out = tmp_path / "run"
    train(tiny(out, epochs=3), stop_after=1, progress=False)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "epochs": "3"}))
    refused(capsys, "epochs must be int", "train", "--out", out, "--resume")
    (out / "config.json").write_text(json.dumps([config]))
    refused(capsys, "a training configuration is a JSON object", "train", "--out", out, "--resume")
    (out / "config.json").write_bytes(b"\xff\xfe")
    refused(capsys, "is not a training configuration", "train", "--out", out, "--resume")
    (out / "config.json").write_text(json.dumps(config))
    state = out / "state.safetensors"
    with safe_open(str(state), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, state, metadata={k: v for k, v in metadata.items() if k != "optimizer_scalars"})
    refused(capsys, "damaged training state (no 'optimizer_scalars')", "train", "--out", out, "--resume")
    info = json.loads(metadata["info"])
    save_file(tensors, state, metadata={**metadata, "info": json.dumps({**info, "epoch": "one"})})
    refused(capsys, "damaged training state (info.epoch", "train", "--out", out, "--resume")
    save_file(tensors, state, metadata=metadata)
    code, out_text, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress")
    assert code == 0 and "epoch 3/3" in out_text, err


def test_pretrained_of_the_wrong_shape(capsys, run, tmp_path):
    with safe_open(str(run / "last.safetensors"), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = "features.1.depthwise.conv.weight"
    tensors[key] = torch.zeros(5, 1, 3, 3)
    save_file(tensors, tmp_path / "odd.safetensors", metadata=metadata)
    refused(capsys, f"tensor {key} has shape (5, 1, 3, 3)", "train", "--out", tmp_path / "ft", "--pretrained",
            tmp_path / "odd.safetensors", "--classes", "0,1", "--epochs", "1")


def test_a_full_disk_during_convert_is_one_line(capsys, tmp_path, monkeypatch):
    from test_convert import torchvision_v2_state

    from mobilenet import files

    source = tmp_path / "v2.pth"
    torch.save(torchvision_v2_state(0.35, 10), source)

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full)
    refused(capsys, "no space left on the device", "convert", source, "--from", "torchvision", "--output",
            tmp_path / "v2.safetensors")
    assert not list(tmp_path.glob("*v2*.safetensors*"))


@pytest.mark.parametrize("resolution, text", [("7", "too small for mobilenet_v1"), ("100000", "from 1 to 4096")])
def test_bench_resolution_is_checked_like_cost_and_train(capsys, resolution, text):
    refused(capsys, text, "bench", "mobilenet_v1", "--resolution", resolution, "--runtime", "eager")
    refused(capsys, text, "cost", "mobilenet_v1", "--resolution", resolution)


def test_messages_say_what_to_do_here(capsys, tmp_path):
    line = refused(capsys, "add --download", "train", "--out", tmp_path / "run", "--data", "cifar10",
                   "--data-root", tmp_path)

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"w": torch.zeros(1), "payload": RunsCode()}, tmp_path / "evil.pth")
    line = refused(capsys, "refused", "convert", tmp_path / "evil.pth", "--from", "torchvision",
                   "--output", tmp_path / "x.safetensors")
    assert "system" in line and "nothing from the file was run" in line
    assert "weights_only" not in line and "Re-running" not in line


# --- eval, predict and export as a person uses them -------------------------------------------

def test_a_class_folder_name_that_is_not_utf8(capsys, tmp_path):
    root = os.fsencode(tmp_path / "odd")
    rng = np.random.default_rng(0)
    for split in (b"train", b"val"):
        for name in (b"caf\xe9", b"dog"):
            folder = os.path.join(root, split, name)
            os.makedirs(folder)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(os.path.join(folder, b"%d.png" % i))
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--out", out, "--data", tmp_path / "odd", "--resolution", "32", "--width",
                       "0.25", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--no-progress")
    assert code == 0, err
    code, text, err = cli(capsys, "eval", out / "last.safetensors", "--data", tmp_path / "odd", "--workers", "0")
    assert code == 0, err
    assert "caf\\xe9" in text and (out / "last.confusion.png").exists()


def test_predict_answers_for_the_good_files_and_names_the_bad_one(capsys, run, tmp_path):
    from mobilenet.data import load_dataset

    image = load_dataset("digits", "test", classes=["0", "1", "2"]).images[0].permute(1, 2, 0).numpy()
    Image.fromarray(np.ascontiguousarray(image)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    code, out, err = cli(capsys, "predict", run / "last.safetensors", tmp_path / "good.png", tmp_path / "bad.png",
                         tmp_path / "good.png", "--runtime", "pytorch")
    assert code == 2
    assert out.count("good.png:") == 2
    assert len(err.strip().splitlines()) == 1 and "bad.png" in err and "Traceback" not in err


def tmpfs(path) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)], capture_output=True).returncode == 0


def test_eval_beside_a_read_only_checkpoint_fails_before_evaluating(capsys, run, tmp_path, monkeypatch):
    """A read-only folder (a tmpfs remounted read-only, since root writes through permissions):
    the plot is checked first, and the message says how to put it elsewhere."""
    folder = tmp_path / "ro"
    if not tmpfs(folder):
        pytest.skip("mounting a tmpfs needs root")
    try:
        (folder / "last.safetensors").write_bytes((run / "last.safetensors").read_bytes())
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        import mobilenet.cli

        monkeypatch.setattr(mobilenet.cli, "evaluate", lambda *a, **k: pytest.fail("evaluated first"))
        refused(capsys, "pass --plot FILE", "eval", folder / "last.safetensors", "--data", "digits",
                "--classes", "0,1,2")
        monkeypatch.undo()
        code, _, err = cli(capsys, "eval", folder / "last.safetensors", "--data", "digits", "--classes", "0,1,2",
                           "--plot", tmp_path / "cm.png")
        assert code == 0 and (tmp_path / "cm.png").exists(), err
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_export_of_a_run_trained_on_a_relative_folder_from_elsewhere(capsys, tmp_path, monkeypatch):
    from test_cli_train import make_folder

    make_folder(tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "train", "--out", "run", "--data", "images", "--width", "0.25", "--resolution", "32",
                       "--batch-size", "4", "--epochs", "1", "--workers", "0", "--no-progress")
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = cli(capsys, "export", tmp_path / "run" / "last.safetensors", "--format", "pt2", "--output",
                         "model.pt2")
    assert code == 0, err
    assert "images test images" in out.replace(str(tmp_path / "images"), "images")  # checked on the real data


def on_a_terminal(command: list[str]) -> tuple[int, str]:
    """Run `command` with stderr on a pseudo-terminal of 24 x 100 (a terminal has a size: at 0
    columns tqdm draws nothing); returns the exit status and what the terminal showed."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child has closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=300)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def test_eval_and_export_show_progress_on_a_terminal(run, tmp_path):
    """On a terminal eval draws a bar with a rate (and int8 export one for its comparison);
    piped, they print none."""
    command = [sys.executable, "-m", "mobilenet", "eval", str(run / "last.safetensors"), "--data", "digits",
               "--classes", "0,1,2", "--runtime", "pytorch", "--batch-size", "8", "--plot", str(tmp_path / "cm.png")]
    code, shown = on_a_terminal(command)
    assert code == 0 and "evaluating" in shown and "img/s" in shown, shown
    piped = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "evaluating" not in piped.stderr
    if ONNX:
        code, shown = on_a_terminal([sys.executable, "-m", "mobilenet", "export", str(run / "last.safetensors"),
                                     "--int8", "--output", str(tmp_path / "m.onnx"), "--calibration-images", "32"])
        assert code == 0 and "int8 against fp32" in shown and "img/s" in shown, shown


def test_folder_links_are_followed_once(capsys, tmp_path):
    """`cat/loop -> ..` (a loop), `cat/again -> ../cat` (its own class) and `dog/cats -> ../cat`
    (another class): each image is counted once, under its own class, and the skips are named."""
    from test_cli_train import make_folder

    from mobilenet.data import load_dataset

    root = make_folder(tmp_path / "images")
    train_dir = root / "train"
    (train_dir / "cat" / "loop").symlink_to("..")
    (train_dir / "cat" / "again").symlink_to("../cat")
    (train_dir / "dog" / "cats").symlink_to("../cat")
    (train_dir / "dog" / "nowhere").symlink_to("../missing")
    (train_dir / "dog" / "extra").mkdir()
    (train_dir / "dog" / "extra" / "more").symlink_to(train_dir / "dog" / "extra")  # a loop further down
    capsys.readouterr()
    dataset = load_dataset(root, "train", resolution=32)
    assert len(dataset) == 8 and list(np.bincount(dataset.labels)) == [4, 4]
    err = capsys.readouterr().err
    assert "skipped 4 folder links" in err and "cat/loop" in err and "dog/cats" in err
    code, out, err = cli(capsys, "train", "--out", tmp_path / "run", "--data", root, "--width", "0.25",
                         "--resolution", "32", "--batch-size", "4", "--epochs", "1", "--workers", "0", "--no-progress")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text())["test_images"] == 8


# --- images read as they are meant, and nothing that would block or blow up ---------------------

def test_photos_are_read_upright(capsys, run, tmp_path):
    """A phone stores a portrait photo sideways with EXIF Orientation 6: it is read as shown, the
    answer the same as for the upright file (once every such file was classified sideways)."""
    from mobilenet.data import decode_image, load_dataset

    image = load_dataset("digits", "test", classes=["0", "1", "2"]).images[5].permute(1, 2, 0).numpy()
    upright = Image.fromarray(np.ascontiguousarray(image))
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.png", exif=exif)
    assert np.array_equal(np.asarray(decode_image(tmp_path / "sideways.png")), np.asarray(upright))
    code, out, err = cli(capsys, "predict", run / "last.safetensors", tmp_path / "upright.png",
                         tmp_path / "sideways.png", "--runtime", "pytorch", "--json")
    first, second = json.loads(out)
    assert code == 0 and first["predictions"] == second["predictions"], err


def test_a_strip_image_is_refused_before_it_is_resized(capsys, run, tmp_path):
    """2,000,000 x 1 pixels is a 2 KB PNG under Pillow's bomb limit, but scaled to the model's short
    side it would be billions of pixels (3.6 GB once): refused in one line, the other files answered."""
    import resource

    Image.new("RGB", (2_000_000, 1)).save(tmp_path / "strip.png")
    Image.new("RGB", (20, 20)).save(tmp_path / "fine.png")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, out, err = cli(capsys, "predict", run / "last.safetensors", tmp_path / "strip.png", tmp_path / "fine.png",
                         "--runtime", "pytorch")
    assert code == 2 and "fine.png:" in out and len(err.strip().splitlines()) == 1, err
    assert "strip.png" in err and "would be resized to" in err and "MAX_IMAGE_PIXELS" in err
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # kB: no giant buffer


def test_a_named_pipe_is_refused_not_read(capsys, run, tmp_path):
    """predict of a FIFO, or a folder holding one, once blocked for ever: refused before it is opened."""
    import signal

    from mobilenet.data import load_dataset

    os.mkfifo(tmp_path / "pipe.png")
    signal.alarm(60)  # a regression fails the test instead of hanging the run
    try:
        refused(capsys, "pipe.png is a named pipe, not a regular file", "predict", run / "last.safetensors",
                tmp_path / "pipe.png", "--runtime", "pytorch")
        folder = tmp_path / "folder"
        for split in ("train", "val"):
            (folder / split / "a").mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(folder / split / "a" / "0.png")
        os.mkfifo(folder / "val" / "a" / "1.png")
        with pytest.raises(ValueError, match="1.png is a named pipe, not a regular file"):
            dataset = load_dataset(folder, "val", resolution=8, channels=3)
            [dataset[i] for i in range(len(dataset))]
        with pytest.raises(ValueError, match="1.png is a named pipe, not a regular file"):
            load_dataset(folder, "val")  # the defaults read the headers: refused there
    finally:
        signal.alarm(0)


@pytest.mark.parametrize("channels", [2, 4])
def test_predict_with_a_checkpoint_of_other_channels_is_one_line(capsys, tmp_path, channels):
    from mobilenet import create_model
    from mobilenet.checkpoint import ModelMeta, save_checkpoint

    model = create_model("mobilenet_v1", width_mult=0.25, num_classes=3, small_input=True, in_chans=channels)
    meta = ModelMeta(config=model.config, classes=["a", "b", "c"], resolution=32, mean=(0.5,) * channels,
                     std=(0.25,) * channels)
    save_checkpoint(tmp_path / "m.safetensors", model, meta)
    Image.new("RGB", (32, 32)).save(tmp_path / "photo.png")
    refused(capsys, f"takes images of {channels} channels; predict reads image files as RGB (3 channels) or grey (1)",
            "predict", tmp_path / "m.safetensors", tmp_path / "photo.png")
