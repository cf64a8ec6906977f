"""The MNIST family (IDX files) and grayscale models: reading, refusing bad files, downloading,
training at 28x28 in one channel, and a grayscale model through cost, checkpoint, export and predict.

The IDX files are written here byte by byte from the format's definition (magic: two zero bytes,
a type code, the number of dimensions; big-endian 32-bit sizes; the values), gzip-compressed as
published or raw; the Debian package `dataset-fashion-mnist` is not needed.
"""

import dataclasses
import gzip
import hashlib
import json
import re
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from runs import tiny

from mobilenet import create_model
from mobilenet.checkpoint import load_checkpoint
from mobilenet.cost import cost
from mobilenet.data import load_dataset
from mobilenet.data.mnist import DATASETS, download_idx, read_idx
from mobilenet.train import adapt_stem, train

TRAIN, TEST = 160, 40  # images per split of the tiny sets (the recipe's batch is 128)


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_set(folder, seed: int = 0, gz: bool = True, classes: int = 10) -> dict:
    """The four files of a tiny member of the family in `folder`; returns the arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, count in (("train", TRAIN), ("t10k", TEST)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % classes).astype(np.uint8)
        arrays[split] = (images, labels)
        for kind, array, dims in (("images", images, 3), ("labels", labels, 1)):
            data = idx_bytes(array)
            name = f"{split}-{kind}-idx{dims}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_idx_files_read_as_the_format_defines(tmp_path, gz):
    arrays = write_idx_set(tmp_path / "fashion-mnist", gz=gz)
    train = load_dataset("fashion-mnist", "train", root=tmp_path)
    test = load_dataset("fashion-mnist", "test", root=tmp_path)
    assert train.images.shape == (TRAIN, 1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], torch.from_numpy(arrays["train"][0]))
    assert train.labels.tolist() == arrays["train"][1].tolist() and len(test) == TEST
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"  # torchvision's names
    assert train.resolution == 28 and train.channels == 1 and train.mean == (0.2860,)
    assert train.flip and not load_dataset("kmnist", "train", root=_copy(tmp_path, "kmnist")).flip
    assert not load_dataset("mnist", "train", root=_copy(tmp_path, "mnist")).flip  # a mirrored 2 is no 2
    assert load_dataset("mnist", "test", root=tmp_path).classes[3] == "3 - three"
    wide = load_dataset("fashion-mnist", "train", root=tmp_path, resolution=32, channels=3)
    assert wide.images.shape == (TRAIN, 3, 32, 32) and wide.mean == (0.2860,) * 3


def _copy(root, name):
    import shutil

    if not (root / name).exists():
        shutil.copytree(root / "fashion-mnist", root / name)
    return root


def test_other_idx_types_and_sizes(tmp_path):
    values = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    (tmp_path / "x").write_bytes(idx_bytes(values, 0x0B))
    assert np.array_equal(read_idx(tmp_path / "x"), values)
    floats = np.linspace(0, 1, 5, dtype=np.float32)
    (tmp_path / "f.gz").write_bytes(gzip.compress(idx_bytes(floats, 0x0D)))
    assert np.array_equal(read_idx(tmp_path / "f.gz"), floats)


@pytest.mark.parametrize("damage, message", [
    (lambda data: b"\x01\x02" + data[2:], "wrong magic number 0102"),
    (lambda data: data[:2] + b"\x07" + data[3:], "wrong magic number 0000070"),
    (lambda data: data[:-10], "is truncated"),
    (lambda data: data[:6], "is truncated"),
    (lambda data: data + b"\x00", "longer than its header says"),
    (lambda data: b"", "wrong magic number (empty)"),
], ids=["magic", "type", "truncated", "truncated-header", "trailing", "empty"])
def test_a_bad_idx_file_is_named_in_one_line(tmp_path, cli, damage, message):
    write_idx_set(tmp_path / "fashion-mnist")
    target = tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    target.write_bytes(gzip.compress(damage(gzip.decompress(target.read_bytes()))))
    proc = cli("train", "--out", tmp_path / "run", "--data", "fashion-mnist", "--data-root", tmp_path, "--epochs", "1")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(target) in lines[0] and message in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("file, array, type_code, message", [
    ("train-labels-idx1-ubyte", np.full(TRAIN, np.nan, np.float32), 0x0D, "not N whole-number labels"),
    ("train-images-idx3-ubyte", np.zeros((TRAIN, 0, 28), np.uint8), 0x08, "holds images of 0 x 28 pixels"),
    ("t10k-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8), 0x08, "holds no images"),
], ids=["nan-labels", "height-0", "no-test-images"])
def test_idx_contents_a_model_cannot_use_are_refused_in_one_line(tmp_path, cli, file, array, type_code, message):
    """Float (NaN) labels, images of no pixels and an empty split are named before any work, by train
    and eval alike (eval of an empty test split once reported "top-1 0.00%" and exited 0)."""
    write_idx_set(tmp_path / "fashion-mnist")
    target = tmp_path / "fashion-mnist" / f"{file}.gz"
    target.write_bytes(gzip.compress(idx_bytes(array, type_code)))
    if file.startswith("t10k-images"):
        (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(np.zeros(0, np.uint8))))
    proc = cli("train", "--out", tmp_path / "run", "--epochs", "1", "--data", "fashion-mnist", "--data-root", tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(target) in lines[0] and message in lines[0], lines[0]
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=re.escape(message)):  # what eval loads, after the checkpoint
        load_dataset("fashion-mnist", "test" if file.startswith("t10k") else "train", root=tmp_path)


def test_raw_and_gzip_files_that_differ_are_refused(tmp_path):
    """Both the raw and the .gz file of one IDX file: used only if they hold the same array."""
    arrays = write_idx_set(tmp_path / "fashion-mnist")
    folder = tmp_path / "fashion-mnist"
    images, labels = arrays["train"]
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))  # the same, unpacked: fine
    assert torch.equal(load_dataset("fashion-mnist", "train", root=tmp_path).images[:, 0], torch.from_numpy(images))
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(255 - images))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte and .*train-images-idx3-ubyte.gz hold different "
                                         "data: delete the one that is wrong"):
        load_dataset("fashion-mnist", "train", root=tmp_path)


def test_counts_that_differ_and_missing_files(tmp_path, cli):
    write_idx_set(tmp_path / "fashion-mnist")
    labels = tmp_path / "fashion-mnist" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(TRAIN - 1, dtype=np.uint8))))
    proc = cli("eval", "x.safetensors", "--data", "fashion-mnist", "--data-root", tmp_path)  # the checkpoint first
    assert proc.returncode == 2
    with pytest.raises(ValueError, match=f"has {TRAIN} images but {labels} has {TRAIN - 1} labels"):
        load_dataset("fashion-mnist", "train", root=tmp_path)
    labels.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{labels.with_suffix('')}(.gz) is missing")):
        load_dataset("fashion-mnist", "train", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="add --download to fetch it"):
        load_dataset("kmnist", "train", root=tmp_path / "elsewhere")  # no system copy of KMNIST
    proc = cli("train", "--out", tmp_path / "run", "--data", "kmnist", "--data-root", tmp_path / "nothing")
    assert proc.returncode == 2 and "kmnist not found" in proc.stderr and "--download" in proc.stderr


def test_download_checks_md5_tries_the_mirrors_and_keeps_nothing_bad(tmp_path, serve):
    served = tmp_path / "served"
    write_idx_set(served)
    md5 = {path.name.removesuffix(".gz"): hashlib.md5(path.read_bytes()).hexdigest() for path in served.iterdir()}
    url = serve(served)
    dataset = dataclasses.replace(DATA := DATASETS["fashion-mnist"], mirrors=(url + "/missing/", url + "/"), md5=md5)
    folder = download_idx(dataset, tmp_path / "root")
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in served.iterdir())
    assert DATA.classes == dataset.classes
    bad = dataclasses.replace(dataset, md5={**md5, "t10k-labels-idx1-ubyte": "0" * 32})
    with pytest.raises(ValueError, match="has md5"):  # a file already there that does not match is refused
        download_idx(bad, tmp_path / "root")
    with pytest.raises(ValueError, match="checksum mismatch for t10k-labels-idx1-ubyte.gz"):
        download_idx(bad, tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in (tmp_path / "fresh" / "fashion-mnist").iterdir() if ".tmp-" in p.name]


# --- grayscale models -------------------------------------------------------------------------

def test_a_grayscale_model_costs_its_one_channel():
    rgb, grey = cost("mobilenet_v1", 28, width_mult=0.5, small_input=True), cost(
        "mobilenet_v1", 28, width_mult=0.5, small_input=True, in_chans=1)
    stem = (rgb.layers[0], grey.layers[0])
    # D_K * D_K * M * N * D_F * D_F with M = 3 and 1: the stem's mult-adds and weights fall to a third
    assert stem[0].macs == 3 * stem[1].macs == 3 * 3 * 3 * 16 * 28 * 28
    assert rgb.macs - grey.macs == stem[0].macs - stem[1].macs
    model = create_model("mobilenet_v1", width_mult=0.5, small_input=True, num_classes=10, in_chans=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10) and grey.layers[0].input_shape == (1, 28, 28)


pytestmark = pytest.mark.xdist_group("test_mnist")  # one pytest-xdist worker: `grey_run` is built once


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    write_idx_set(root / "fashion-mnist")
    out = root / "run"
    train(tiny(out, data="fashion-mnist", data_root=str(root), classes=None, resolution=None, epochs=1,
               batch_size=20), progress=False)
    return out, root


def test_the_mnist_family_trains_in_one_channel_at_28(grey_run):
    out, _ = grey_run
    model, meta = load_checkpoint(out / "last.safetensors", with_meta=True)
    assert model.config.in_chans == 1 and meta.resolution == 28 and meta.mean == (0.2860,)
    assert meta.classes[0] == "T-shirt/top" and meta.data["data"] == "fashion-mnist"
    assert json.loads((out / "config.json").read_text())["data"] == "fashion-mnist"


def test_predict_turns_an_rgb_photo_into_the_models_grey(grey_run, tmp_path, cli):
    out, _ = grey_run
    rgb = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.png")
    answers = [json.loads(cli("predict", out / "last.safetensors", tmp_path / name, "--json", "--runtime",
                              "pytorch").stdout)[0]["predictions"] for name in ("photo.png", "grey.png")]
    assert answers[0] == answers[1]  # the photo is seen as its own luma


def test_export_and_eval_of_a_grayscale_checkpoint(grey_run, tmp_path, cli):
    from mobilenet.optional import available

    out, root = grey_run
    fmt = "onnx" if available("onnxruntime") else "pt2"
    proc = cli("export", out / "last.safetensors", "--format", fmt, "--output", tmp_path / f"m.{fmt}")
    assert proc.returncode == 0 and "fashion-mnist test images" in proc.stdout, proc.stderr
    proc = cli("eval", out / "last.safetensors", "--data", "fashion-mnist", "--data-root", root, "--json",
               "--plot", tmp_path / "cm.png")
    assert proc.returncode == 0 and json.loads(proc.stdout)["num_images"] == TEST, proc.stderr


def test_an_rgb_folder_read_in_one_channel(tmp_path):
    """What eval does with a folder for a grayscale checkpoint: the luma of the RGB images."""
    from test_cli_train import make_folder

    from mobilenet.data.folder import eval_transform

    root = make_folder(tmp_path / "images")
    grey, rgb = (load_dataset(root, "test", resolution=32, channels=c) for c in (1, 3))
    assert grey.channels == 1 and len(grey.mean) == 1 and grey[0][0].shape == (1, 32, 32)
    expected = eval_transform(Image.open(grey.paths[0]).convert("RGB").convert("L"), 32)
    assert torch.equal(grey[0][0], expected) and rgb[0][0].shape == (3, 32, 32)


def test_pretrained_rgb_stem_summed_into_one_channel():
    """timm's rule: a grey image through the summed stem gives exactly what its RGB copy gives."""
    torch.manual_seed(0)
    rgb = create_model("mobilenet_v2", width_mult=0.35, num_classes=4).eval()
    grey = create_model("mobilenet_v2", width_mult=0.35, num_classes=4, in_chans=1).eval()
    state = rgb.state_dict()
    state["features.0.conv.weight"] = adapt_stem(state["features.0.conv.weight"], 1)
    grey.load_state_dict(state)
    image = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(grey(image), rgb(image.expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-5)
    weight = torch.randn(8, 1, 3, 3)
    assert torch.allclose(adapt_stem(weight, 3).sum(1, keepdim=True), weight)  # and back again


def test_fine_tuning_an_rgb_checkpoint_on_grey_data(grey_run, tmp_path):
    from mobilenet.checkpoint import ModelMeta, save_checkpoint

    _, root = grey_run
    torch.manual_seed(1)
    source = create_model("mobilenet_v1", width_mult=0.25, num_classes=10, small_input=True)
    path = tmp_path / "rgb.safetensors"
    save_checkpoint(path, source, ModelMeta(config=source.config, classes=[str(i) for i in range(10)], resolution=28,
                                            mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2)))
    out = tmp_path / "ft"
    train(tiny(out, data="fashion-mnist", data_root=str(root), classes=None, resolution=None, epochs=1,
               pretrained=str(path), lr=1e-9, batch_size=20), progress=False)
    model, meta = load_checkpoint(out / "last.safetensors", with_meta=True)
    assert model.config.in_chans == 1 and meta.mean == pytest.approx((0.299 * 0.5 + 0.587 * 0.4 + 0.114 * 0.3,))
    summed = source.state_dict()["features.0.conv.weight"].sum(1, keepdim=True)
    torch.testing.assert_close(model.state_dict()["features.0.conv.weight"], summed, rtol=1e-4, atol=1e-6)
