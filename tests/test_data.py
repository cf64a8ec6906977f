"""Data layer: embedded digits, CIFAR-10 (download, safe unpickling), image folders, loaders."""

import hashlib
import io
import os
import pickle
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenet.data import (
    ImageFolder,
    InMemoryDataset,
    decode_image,
    download_cifar10,
    load_cifar10,
    load_dataset,
    make_loader,
)
from mobilenet.data import cifar
from mobilenet.data.folder import eval_transform, random_resized_crop_box
from mobilenet.data.loader import PAD, pad_crop_flip

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH = 6  # images per fake CIFAR batch: 30 training, 6 test


# ---------------------------------------------------------------- digits


def test_digits_shapes_split_and_classes():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape == (1437, 3, 32, 32) and test.images.shape == (360, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.classes == [str(d) for d in range(10)] and train.resolution == 32
    assert set(train.labels.tolist()) == set(test.labels.tolist()) == set(range(10))
    # Stratified: every class holds about 20% of the test split (36 of 360).
    assert torch.bincount(test.labels, minlength=10).sub(36).abs().max() <= 1
    # 0..16 rescaled to 0..255; grey replicated to three identical channels.
    assert train.images.max() == 255 and train.images.min() == 0
    assert torch.equal(train.images, train.images[:, :1].expand(-1, 3, -1, -1))


def test_digits_deterministic_and_resolution():
    first, second = load_dataset("digits", "val"), load_dataset("digits", "test")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert load_dataset("digits", "train", resolution=24).images.shape == (1437, 3, 24, 24)
    with pytest.raises(ValueError, match="resolution must be a whole number of pixels"):
        load_dataset("digits", "train", resolution=0)


def test_digits_mean_std_constants_match_the_training_split():
    pixels = load_dataset("digits", "train").images.double() / 255
    dataset = load_dataset("digits", "train")
    assert dataset.mean[0] == pytest.approx(pixels.mean().item(), abs=1e-4)
    assert dataset.std[0] == pytest.approx(pixels.std().item(), abs=1e-4)


def test_bad_names_and_splits_raise_listing_what_is_allowed():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; expected 'digits', 'cifar10', 'mnist', 'fashion-mnist'"):
        load_dataset("svhn", "train")
    with pytest.raises(ValueError, match="split must be 'train', 'val' or 'test', got 'dev'"):
        load_dataset("digits", "dev")
    with pytest.raises(ValueError, match=r"unknown class name\(s\) 'ten'; available: 0, 1, 2"):
        load_dataset("digits", "train", classes=["1", "ten"])


# ---------------------------------------------------------------- CIFAR-10 in its real format


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings, like the official CIFAR-10 pickles."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    # numpy 1 (which wrote the real files) named the array builder numpy.core.multiarray.
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def fake_cifar_batches() -> dict[str, tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {
        name: (rng.integers(0, 256, (PER_BATCH, 3072), np.uint8), [(i + j) % 10 for j in range(PER_BATCH)])
        for i, name in enumerate(names)
    }


def fake_cifar_files() -> dict[str, bytes]:
    files = {
        name: py2_pickle({b"batch_label": f"{name}".encode(), b"labels": labels, b"data": data})
        for name, (data, labels) in fake_cifar_batches().items()
    }
    files["batches.meta"] = py2_pickle({b"label_names": CIFAR_CLASSES, b"num_cases_per_batch": PER_BATCH})
    return files


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def cifar_archive(tmp_path) -> Path:
    files = {f"cifar-10-batches-py/{name}": data for name, data in fake_cifar_files().items()}
    (tmp_path / "served").mkdir()
    return write_tar(tmp_path / "served" / "cifar-10-python.tar.gz", files)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_verifies_extracts_and_loads(tmp_path, cifar_archive, serve):
    url = serve(cifar_archive.parent) + "/cifar-10-python.tar.gz"
    root = tmp_path / "root"
    folder = download_cifar10(root, url=url, md5=md5_of(cifar_archive))
    assert folder == root / "cifar-10-batches-py" and folder.is_dir()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    assert (root / "cifar-10-python.tar.gz").stat().st_mode & 0o777 == 0o644  # readable by all, like
    assert folder.stat().st_mode & 0o777 == 0o755  # a normal download, though written via mkstemp
    assert download_cifar10(root, url="http://127.0.0.1:9/unused", md5="0" * 32) == folder  # already there
    train = load_dataset("cifar10", "train", root=root)
    batches = fake_cifar_batches()
    expected = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert train.classes == CIFAR_CLASSES and train.resolution == 32
    assert torch.equal(train.images, torch.from_numpy(expected))
    assert train.labels.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert train.mean == (0.4914, 0.4822, 0.4465) and train.std == (0.2470, 0.2435, 0.2616)


def test_checksum_failure_raises_and_leaves_nothing(tmp_path, cifar_archive, serve):
    url = serve(cifar_archive.parent) + "/cifar-10-python.tar.gz"
    root = tmp_path / "root"
    actual = md5_of(cifar_archive)
    with pytest.raises(ValueError, match=f"expected md5 {'f' * 32}, got {actual}"):
        download_cifar10(root, url=url, md5="f" * 32)
    assert list(root.iterdir()) == []


def test_failed_download_names_the_url_and_leaves_nothing(tmp_path, cifar_archive, serve):
    url = serve(cifar_archive.parent) + "/missing.tar.gz"
    with pytest.raises(OSError, match=f"download of {url} failed: HTTP Error 404"):
        download_cifar10(tmp_path / "root", url=url, md5=md5_of(cifar_archive))
    assert list((tmp_path / "root").iterdir()) == []


def test_interrupted_download_leaves_nothing(tmp_path, cifar_archive, serve, monkeypatch):
    class InterruptedBar:
        def __init__(self, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            raise KeyboardInterrupt

    monkeypatch.setattr("mobilenet.files.tqdm", InterruptedBar)
    url = serve(cifar_archive.parent) + "/cifar-10-python.tar.gz"
    with pytest.raises(KeyboardInterrupt):
        download_cifar10(tmp_path / "root", url=url, md5=md5_of(cifar_archive))
    assert list((tmp_path / "root").iterdir()) == []


def test_archive_and_extracted_folder_read_the_same(tmp_path, cifar_archive):
    folder = cifar.extract_archive(cifar_archive, tmp_path)
    for split in ("train", "test"):
        from_archive, from_folder = load_cifar10(cifar_archive, split), load_cifar10(folder, split)
        assert torch.equal(from_archive.images, from_folder.images)
        assert torch.equal(from_archive.labels, from_folder.labels)
    # A path given as `data` is recognised as CIFAR-10, archive or folder; val is the test batch.
    assert len(load_dataset(str(cifar_archive), "val")) == PER_BATCH
    assert load_dataset(str(folder), "train", resolution=16).images.shape == (5 * PER_BATCH, 3, 16, 16)


def test_cifar10_is_looked_up_under_mobilenet_data(tmp_path, cifar_archive, monkeypatch):
    monkeypatch.setenv("MOBILENET_DATA", str(cifar_archive.parent))
    assert len(load_dataset("cifar10", "test")) == PER_BATCH  # read straight from the archive


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="add --download"):
        load_dataset("cifar10", "train", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="no dataset at"):
        load_dataset(str(tmp_path / "nowhere" / "cifar-10-python.tar.gz"), "train")


class RunsCommand:
    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_unpickler_refuses_other_globals_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    RunsCommand.marker = marker
    folder = cifar.extract_archive(write_tar(tmp_path / "a.tar.gz", {
        f"cifar-10-batches-py/{name}": data for name, data in fake_cifar_files().items()}), tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": RunsCommand(), b"labels": []}))
    with pytest.raises(
        ValueError, match=r"refusing to unpickle .*test_batch: it references (posix|os)\.system,"
    ):
        load_cifar10(folder, "test")
    assert not marker.exists()


def test_tar_with_path_traversal_is_refused(tmp_path):
    files = {f"cifar-10-batches-py/{name}": data for name, data in fake_cifar_files().items()}
    archive = write_tar(tmp_path / "evil.tar.gz", {**files, "../escaped": b"x"})
    (tmp_path / "root").mkdir()
    with pytest.raises(ValueError, match="unsafe path '../escaped'"):
        cifar.extract_archive(archive, tmp_path / "root")
    assert list((tmp_path / "root").iterdir()) == [] and not (tmp_path / "escaped").exists()


def test_class_filter_keeps_and_renumbers_in_given_order(cifar_archive):
    full = load_dataset(str(cifar_archive), "train")
    two = load_dataset(str(cifar_archive), "train", classes=["airplane", "bird"])
    assert two.classes == ["airplane", "bird"]
    assert torch.equal(two.images, full.images[(full.labels == 0) | (full.labels == 2)])
    assert torch.equal(two.labels, (full.labels[(full.labels == 0) | (full.labels == 2)] == 2).long())
    swapped = load_dataset(str(cifar_archive), "train", classes=["bird", "airplane"])
    assert torch.equal(swapped.labels, 1 - two.labels)
    with pytest.raises(ValueError, match=r"unknown class name\(s\) 'plane'; available: airplane, automobile"):
        load_dataset(str(cifar_archive), "train", classes=["plane"])


# ---------------------------------------------------------------- image folders


def save_image(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def rgba_image() -> Image.Image:
    pixels = np.zeros((12, 10, 4), dtype=np.uint8)
    pixels[:, :5] = (255, 0, 0, 255)  # left half opaque red; right half fully transparent black
    return Image.fromarray(pixels, "RGBA")


def grey16_image() -> Image.Image:
    values = np.array([[0, 32768, 65535]] * 3, dtype=np.uint16)
    return Image.fromarray(values)  # uint16 -> mode I;16


def palette_image() -> Image.Image:
    blue = Image.fromarray(np.full((9, 9, 3), (0, 0, 255), np.uint8))
    return blue.convert("P", palette=Image.Palette.ADAPTIVE)


# (file name, image, top-left pixel expected after conversion to RGB, tolerance for JPEG)
MODES = {
    "L": ("grey.png", Image.new("L", (10, 12), 100), (100, 100, 100), 0),
    "P": ("palette.png", palette_image(), (0, 0, 255), 0),
    "RGBA": ("alpha.png", rgba_image(), (255, 0, 0), 0),
    "CMYK": ("cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), (255, 0, 0), 8),
    "I;16": ("deep.png", grey16_image(), (0, 0, 0), 0),
    "RGB": ("colour.jpg", Image.new("RGB", (20, 14), (10, 200, 30)), (10, 200, 30), 8),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_decodes_to_rgb(tmp_path, mode):
    name, image, top_left, tolerance = MODES[mode]
    path = save_image(tmp_path / name, image)
    assert Image.open(path).mode == mode
    decoded = decode_image(path)
    assert decoded.mode == "RGB" and decoded.size == image.size
    assert np.abs(np.asarray(decoded)[0, 0].astype(int) - top_left).max() <= tolerance


def test_sixteen_bit_is_scaled_not_clipped_and_transparency_goes_on_white(tmp_path):
    deep = np.asarray(decode_image(save_image(tmp_path / "deep.png", grey16_image())))
    assert deep[0, :, 0].tolist() == [0, 128, 255]
    alpha = np.asarray(decode_image(save_image(tmp_path / "alpha.png", rgba_image())))
    assert alpha[0, 9].tolist() == [255, 255, 255]  # transparent black shows the white background
    clear_palette = Image.new("P", (4, 4), 0)
    clear_palette.putpalette([0, 0, 0, 200, 0, 0])
    clear_palette.info["transparency"] = 0
    for name, image in (("clear.png", clear_palette), ("clear_la.png", Image.new("LA", (4, 4), (0, 0)))):
        assert np.asarray(decode_image(save_image(tmp_path / name, image)))[0, 0].tolist() == [255, 255, 255]


@pytest.fixture
def folder_root(tmp_path) -> Path:
    """train/ and val/ with classes cat and dog, in every image mode, 8 training images per class."""
    for split, count in (("train", 8), ("val", 3)):
        for label, name in enumerate(["cat", "dog"]):
            for i in range(count):
                _, image, _, _ = list(MODES.values())[(i + label) % len(MODES)]
                extension = ".jpg" if image.mode in ("CMYK", "RGB") else ".png"
                save_image(tmp_path / "images" / split / name / f"{i}{extension}", image.resize((40, 30)))
    (tmp_path / "images" / "train" / "cat" / "README.txt").write_text("not an image, and ignored")
    return tmp_path / "images"


def test_folder_dataset_items_and_attributes(folder_root):
    val = load_dataset(str(folder_root), "val", resolution=36)
    assert val.classes == ["cat", "dog"] and len(val) == 6 and val.resolution == 36
    assert val.mean == (0.485, 0.456, 0.406) and val.std == (0.229, 0.224, 0.225)
    image, label = val[4]
    assert image.shape == (3, 36, 36) and image.dtype == torch.uint8 and label == 1
    assert load_dataset(str(folder_root), "train").resolution == 30  # small images: their own size (median side)
    assert len(load_dataset(str(folder_root), "test", classes=["dog"])) == 3


def test_a_validation_split_holds_out_a_fixed_share_of_each_class(folder_root):
    """`hold_out`: per class, round(fraction x its images) held out (at least one, never all), the two
    parts disjoint and together the whole split; the same images for every call (a fixed draw, not
    the run's seed), for data in memory and for an image folder (sorted by class, where Keras'
    last-images rule would hold out one class)."""
    from mobilenet.data.load import hold_out

    digits = load_dataset("digits", "train")
    kept, held = hold_out(digits, 0.1)
    for label in range(10):
        members = int((digits.labels == label).sum())
        assert int((held.labels == label).sum()) == round(0.1 * members)
        assert int((kept.labels == label).sum()) == members - round(0.1 * members)
    both = torch.cat([kept.images.flatten(1), held.images.flatten(1)])
    assert len(both) == len(digits) and len(torch.unique(both, dim=0)) == len(torch.unique(digits.images.flatten(1),
                                                                                            dim=0))
    again_kept, again_held = hold_out(digits, 0.1)
    assert torch.equal(again_held.images, held.images) and torch.equal(again_kept.labels, kept.labels)
    folder = load_dataset(str(folder_root), "train", resolution=16)
    kept, held = hold_out(folder, 0.2)  # 8 per class: round(1.6) = 2 held out of each
    assert sorted(held.labels.tolist()) == [0, 0, 1, 1] and len(kept) == 12
    assert not set(held.paths.tolist()) & set(kept.paths.tolist())
    assert set(held.paths.tolist()) | set(kept.paths.tolist()) == set(folder.paths.tolist())
    assert held[0][0].shape == (3, 16, 16)
    _, one = hold_out(folder, 0.01)  # at least one of each class
    assert sorted(one.labels.tolist()) == [0, 1]
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        hold_out(folder, 1.0)


def test_eval_transform_resizes_short_side_then_centre_crops():
    # A 200 x 100 horizontal ramp: red = column. Short side 100 -> 32, width 200 -> 64, then the
    # centre 28 columns (18..46 of 64) show original columns about 56..144.
    ramp = np.zeros((100, 200, 3), np.uint8)
    ramp[:, :, 0] = np.arange(200)
    out = eval_transform(Image.fromarray(ramp), 28)
    assert out.shape == (3, 28, 28)
    assert abs(int(out[0, 0, 0]) - 57) <= 2 and abs(int(out[0, 0, -1]) - 142) <= 2
    # crop_fraction 1: short side to 28 exactly, width 56, centre columns 14..42 ~ original 50..150.
    whole = eval_transform(Image.fromarray(ramp), 28, crop_fraction=1.0)
    assert abs(int(whole[0, 0, 0]) - 50) <= 2 and abs(int(whole[0, 0, -1]) - 148) <= 2


def test_random_resized_crop_box_follows_torchvision_semantics():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(300, 200, rng)
        assert 0 <= left < right <= 300 and 0 <= top < bottom <= 200
        area, aspect = (right - left) * (bottom - top) / 60000, (right - left) / (bottom - top)
        assert 0.08 * 0.95 <= area <= 1 and 3 / 4 * 0.95 <= aspect <= 4 / 3 * 1.05
    # No crop of a 1000 x 10 strip fits the ratio range: fall back to the centred 4:3 crop.
    assert random_resized_crop_box(1000, 10, rng) == (493, 0, 506, 10)


def test_folder_loader_batches_are_reproducible_and_augmented(folder_root):
    train = load_dataset(str(folder_root), "train", resolution=24)
    loader = make_loader(train, 4, train=True, seed=3, workers=2, channels_last=True)
    assert len(loader) == 4
    loader.set_epoch(1)
    first = list(loader)
    images, labels = first[0]
    assert images.shape == (4, 3, 24, 24) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.is_contiguous(memory_format=torch.channels_last)
    serial = make_loader(train, 4, train=True, seed=3, workers=0)
    serial.set_epoch(1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, serial))
    serial.set_epoch(2)
    assert not torch.equal(next(iter(serial))[0], images)


def test_folder_eval_loader_covers_every_image_once_across_ranks(folder_root):
    val = load_dataset(str(folder_root), "val", resolution=20)
    shards = [make_loader(val, 4, train=False, rank=r, world_size=2, workers=0) for r in (0, 1)]
    labels = [torch.cat([batch[1] for batch in shard]) for shard in shards]
    assert [len(shard) for shard in shards] == [1, 1] and sorted(map(len, labels)) == [3, 3]
    assert sorted(torch.cat(labels).tolist()) == [0, 0, 0, 1, 1, 1]


def test_broken_images_raise_errors_naming_the_file(folder_root):
    good = (folder_root / "train" / "cat" / "5.jpg").read_bytes()
    truncated = folder_root / "train" / "cat" / "truncated.jpg"
    truncated.write_bytes(good[: len(good) // 2])
    not_image = folder_root / "train" / "dog" / "notes.png"
    not_image.write_text("hello")
    for path in (truncated, not_image):
        with pytest.raises(ValueError, match=re.escape(f"cannot decode image {path}")):
            decode_image(path)
    dataset = load_dataset(str(folder_root), "train", resolution=16, channels=3)  # nothing left to decide
    with pytest.raises(ValueError, match=re.escape(f"cannot decode image {truncated}")):
        list(make_loader(dataset, 2, train=False, workers=1))
    with pytest.raises(ValueError, match=re.escape(f"cannot decode image {truncated}")):
        load_dataset(str(folder_root), "train")  # the defaults read its header: named there


def test_missing_and_empty_folders_raise_clear_errors(tmp_path, folder_root):
    with pytest.raises(FileNotFoundError, match="no dataset at"):
        load_dataset(str(tmp_path / "missing"), "train")
    with pytest.raises(FileNotFoundError, match="no image folder at"):
        ImageFolder(tmp_path / "missing", "train")
    (tmp_path / "only_train" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="only_train/val; an image folder needs train/<class>/"):
        load_dataset(str(tmp_path / "only_train"), "train")
    (tmp_path / "only_train" / "val").mkdir()
    with pytest.raises(ValueError, match="val has no class sub-folders"):
        load_dataset(str(tmp_path / "only_train"), "train")
    (folder_root / "val" / "bird").mkdir()
    with pytest.raises(ValueError, match="must have the same class folders; differing: bird"):
        load_dataset(str(folder_root), "val")
    (folder_root / "train" / "bird").mkdir()
    with pytest.raises(ValueError, match="class folder .*bird has no images"):
        load_dataset(str(folder_root), "val")


# ---------------------------------------------------------------- in-memory loader


def id_dataset(n: int, side: int = 8) -> InMemoryDataset:
    """Image i is filled with value i + 1 (0 is the padding), and its label is i: samples are traceable."""
    images = (torch.arange(n, dtype=torch.uint8) + 1).view(n, 1, 1, 1).expand(n, 3, side, side).contiguous()
    names = [str(i) for i in range(n)]
    return InMemoryDataset(images, torch.arange(n), names, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def test_pad_crop_flip_is_a_crop_of_the_padded_image():
    pattern = torch.arange(1, 65, dtype=torch.uint8).view(1, 1, 8, 8).expand(5, 3, 8, 8).contiguous()
    shifts = torch.tensor([[PAD, PAD], [PAD, PAD], [0, 0], [8, 3], [2, 7]])
    flips = torch.tensor([False, True, False, True, False])
    out = pad_crop_flip(pattern, shifts, flips)
    assert torch.equal(out[0], pattern[0])  # centred, unflipped: the image itself
    assert torch.equal(out[1], pattern[1].flip(-1))
    padded = torch.nn.functional.pad(pattern, (PAD, PAD, PAD, PAD))
    for i in range(2, 5):
        top, left = shifts[i].tolist()
        crop = padded[i, :, top : top + 8, left : left + 8]
        assert torch.equal(out[i], crop.flip(-1) if flips[i] else crop)
    assert out[2, :, :PAD].eq(0).all() and out[2, :, :, :PAD].eq(0).all()  # zero padding


def test_train_batches_depend_only_on_seed_and_epoch():
    data = load_dataset("digits", "train")

    def epoch(loader, number):
        loader.set_epoch(number)
        return list(loader)

    one, two = make_loader(data, 256, train=True, seed=7), make_loader(data, 256, train=True, seed=7)
    assert len(one) == 1437 // 256
    a, b = epoch(one, 3), (epoch(two, 5), epoch(two, 3))[1]  # resuming at epoch 3 after epoch 5
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert not torch.equal(epoch(one, 4)[0][1], a[0][1])
    assert not torch.equal(epoch(make_loader(data, 256, train=True, seed=8), 3)[0][1], a[0][1])


def test_train_loader_augments_and_normalises():
    data = id_dataset(40)
    images, labels = next(iter(make_loader(data, 40, train=True, seed=0)))
    pixels = (images * 255).round()  # mean 0 and std 1: normalising only divides by 255
    # Every output pixel is its own sample's value or zero padding; some crops show padding.
    assert torch.all((pixels == (labels + 1).view(-1, 1, 1, 1).float()) | (pixels == 0))
    assert (pixels == 0).any()
    digits = load_dataset("digits", "test")
    images, labels = next(iter(make_loader(digits, 360, train=False, channels_last=True)))
    assert images.is_contiguous(memory_format=torch.channels_last)
    mean, std = torch.tensor(digits.mean).view(1, 3, 1, 1), torch.tensor(digits.std).view(1, 3, 1, 1)
    assert torch.allclose(images * std + mean, digits.images.float() / 255, atol=1e-5)
    assert torch.equal(labels, digits.labels)


@pytest.mark.parametrize(("n", "batch_size", "repeated"), [(50, 5, 0), (51, 13, 1)])
def test_ranks_get_disjoint_equal_shards_of_one_permutation(n, batch_size, repeated):
    data = id_dataset(n)
    shards = []
    for rank in (0, 1):
        loader = make_loader(data, batch_size, train=True, seed=1, rank=rank, world_size=2)
        loader.set_epoch(2)
        shards.append(torch.cat([labels for _, labels in loader]).tolist())
    # Equal sizes; together the whole epoch. An odd count is padded with one repeated sample
    # (to 52, as DistributedSampler does), which is then the only sample both ranks see.
    assert len(shards[0]) == len(shards[1]) == (n + 1) // 2
    assert set(shards[0]) | set(shards[1]) == set(range(n))
    assert len(set(shards[0]) & set(shards[1])) == repeated


def test_a_rank_yields_its_share_of_the_single_process_epoch():
    data = load_dataset("digits", "test")
    single = make_loader(data, 360, train=True, seed=5)
    rank1 = make_loader(data, 120, train=True, seed=5, rank=1, world_size=3)
    single.set_epoch(2), rank1.set_epoch(2)
    (all_images, all_labels), (images, labels) = next(iter(single)), next(iter(rank1))
    assert torch.equal(images, all_images[1::3]) and torch.equal(labels, all_labels[1::3])


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_loader_covers_every_sample_exactly_once(world_size):
    data = id_dataset(23)
    seen = []
    for rank in range(world_size):
        loader = make_loader(data, 4, train=False, rank=rank, world_size=world_size)
        batches = list(loader)
        assert len(batches) == len(loader)
        seen += torch.cat([labels for _, labels in batches]).tolist()
    assert sorted(seen) == list(range(23))


def test_loader_arguments_are_checked():
    data = id_dataset(10)
    with pytest.raises(ValueError, match="batch_size 16 is larger than the 10 training samples per rank"):
        make_loader(data, 16, train=True)
    with pytest.raises(ValueError, match="rank must be a whole number from 0 to 1, got 2"):
        make_loader(data, 2, train=True, rank=2, world_size=2)
    with pytest.raises(ValueError, match="make_loader needs a dataset from load_dataset"):
        make_loader([1, 2, 3], 2, train=False)


def test_digits_normalisation_is_the_training_splits_own():
    from mobilenet.data import digits

    pixels = digits.load_digits("train", 32).images[:, 0].double() / 255
    assert digits.MEAN == (round(pixels.mean().item(), 4),) * 3
    assert digits.STD == (round(pixels.std().item(), 4),) * 3


def test_small_images_are_decoded_once_and_give_the_same_tensors(tmp_path, monkeypatch):
    """A folder of small images is decoded once (in memory, or in a keyed file when it would not
    fit); every train and eval item equals the one read from the files, and a changed folder is
    read again."""
    from mobilenet.data import decoded

    rng = np.random.default_rng(0)
    root = tmp_path / "small"
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(5):
                size = (28, 28) if i % 2 else (20, 30)
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    monkeypatch.setenv("MOBILENET_DATA", str(tmp_path / "cache"))

    def items(dataset):
        return [dataset.load(i, train=True, rng=np.random.default_rng(i))[0] for i in range(len(dataset))] + \
               [dataset[i][0] for i in range(len(dataset))]

    for channels in (3, 1):
        plain = load_dataset(root, "train", resolution=24, channels=channels)
        expected = items(plain)
        assert plain.decoded is None
        plain.decode_once(progress=False)
        assert plain.decoded is not None and not isinstance(plain.decoded.buffer, np.memmap)  # it fits in memory
        assert all(torch.equal(a, b) for a, b in zip(items(plain), expected))
        monkeypatch.setattr(decoded, "MEMORY_LIMIT", 0)  # now it does not: a memory-mapped file
        mapped = load_dataset(root, "train", resolution=24, channels=channels)
        mapped.decode_once(progress=False)
        assert isinstance(mapped.decoded.buffer, np.memmap)
        assert all(torch.equal(a, b) for a, b in zip(items(mapped), expected))
        monkeypatch.undo()
        monkeypatch.setenv("MOBILENET_DATA", str(tmp_path / "cache"))
    files = sorted((tmp_path / "cache" / "decoded").iterdir())
    assert len(files) == 4  # two channel counts, each a pixel file and its index
    # a changed image (same name) makes a new key: the cache is not reused for it
    monkeypatch.setattr(decoded, "MEMORY_LIMIT", 0)
    changed = root / "train" / "a" / "0.png"
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))
    again = load_dataset(root, "train", resolution=24)
    again.decode_once(progress=False)
    assert len(list((tmp_path / "cache" / "decoded").iterdir())) == 6
    assert torch.equal(again[0][0], torch.zeros(3, 24, 24, dtype=torch.uint8))
    # large images are not decoded ahead: they stream from their files as before
    big = make_folder_of_size(tmp_path / "big", 128)
    large = load_dataset(big, "train", resolution=32)
    large.decode_once(progress=False)
    assert large.decoded is None


def small_folder(root, seed: int = 0, count: int = 6, suffix: str = ".png"):
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / split / name / f"{i}{suffix}")
    return root


def mapped_items(root, say=None):
    """The eval items of the train split after decode_once through the memory-mapped cache."""
    dataset = load_dataset(root, "train", resolution=12)
    dataset.decode_once(progress=False)
    assert isinstance(dataset.decoded.buffer, np.memmap)
    return [dataset[i][0] for i in range(len(dataset))]


@pytest.mark.parametrize("damage", ["truncated index", "short index", "garbage pixels", "short pixels"])
def test_a_damaged_decoded_cache_is_decoded_again(tmp_path, monkeypatch, capsys, damage):
    """The decoded cache is ours: a truncated index (once zipfile.BadZipFile), an index of fewer images
    than the folder (once IndexError), same-length garbage in its pixels (once 47.5% instead of 100%
    without a word) or a short pixel file is decoded again, with one line, and the items are right."""
    from mobilenet.data import decoded

    monkeypatch.setattr(decoded, "MEMORY_LIMIT", 0)
    monkeypatch.setenv("MOBILENET_DATA", str(tmp_path / "cache"))
    root = small_folder(tmp_path / "small")
    expected = mapped_items(root)
    (pixels,) = (tmp_path / "cache" / "decoded").glob("*.u8")
    index = pixels.with_suffix(".index.npz")
    if damage == "truncated index":
        index.write_bytes(index.read_bytes()[:40])
    elif damage == "short index":
        with np.load(index) as stored:
            kept = {key: stored[key] for key in stored.files}
        np.savez(index, offsets=kept["offsets"][:-1], shapes=kept["shapes"][:-1], sha256=kept["sha256"])
    elif damage == "garbage pixels":
        pixels.write_bytes(np.random.default_rng(1).integers(0, 256, pixels.stat().st_size, dtype=np.uint8).tobytes())
    else:
        pixels.write_bytes(pixels.read_bytes()[:-7])
    capsys.readouterr()
    again = mapped_items(root)
    notes = capsys.readouterr().err.strip().splitlines()
    assert all(torch.equal(a, b) for a, b in zip(again, expected)) and len(again) == len(expected)
    assert len(notes) == 1 and "decoding the images again" in notes[0] and str(pixels) in notes[0], notes
    capsys.readouterr()
    assert all(torch.equal(a, b) for a, b in zip(mapped_items(root), expected))  # rebuilt: used quietly
    assert capsys.readouterr().err == ""


def test_a_folder_extracted_again_with_the_same_names_sizes_and_times_is_read_again(tmp_path, monkeypatch):
    """An archive sets names, sizes and modification times (`tar --mtime`), not inodes or change
    times: a folder re-extracted from another archive is a new key, never the old pixels."""
    from mobilenet.data import decoded

    monkeypatch.setattr(decoded, "MEMORY_LIMIT", 0)
    monkeypatch.setenv("MOBILENET_DATA", str(tmp_path / "cache"))
    root = small_folder(tmp_path / "small", suffix=".bmp")  # uncompressed: an inverted image has the same size
    first = mapped_items(root)
    files = sorted(root.rglob("*.bmp"))
    before = {f: (f.stat().st_size, f.stat().st_mtime_ns) for f in files}
    for f in files[::2]:  # half the images inverted, written as new files of the same size and time
        inverted = 255 - np.asarray(Image.open(f))
        f.unlink()
        Image.fromarray(inverted).save(f)
        os.utime(f, ns=(before[f][1], before[f][1]))
        assert (f.stat().st_size, f.stat().st_mtime_ns) == before[f]
    again = mapped_items(root)
    from_files = load_dataset(root, "train", resolution=12)
    assert all(torch.equal(a, from_files[i][0]) for i, a in enumerate(again))
    assert sum(not torch.equal(a, b) for a, b in zip(first, again)) == len(first) // 2


def test_a_large_image_after_small_ones_is_read_from_its_file(tmp_path, monkeypatch):
    """The size test samples across the folder and decoding once stops at the first large image, so
    a folder of small images then large ones is never decoded whole into memory."""
    root = small_folder(tmp_path / "mixed", count=40)
    for i in range(40, 44):  # after the 40 small ones of class b
        Image.fromarray(np.zeros((300, 300, 3), dtype=np.uint8)).save(root / "train" / "b" / f"{i}.png")
    dataset = load_dataset(root, "train", resolution=12)
    dataset.decode_once(progress=False)
    assert dataset.decoded is None
    from mobilenet.data import decoded

    seen = []
    monkeypatch.setattr(decoded, "SAMPLE", 4)
    real = type(dataset).pixels
    monkeypatch.setattr(type(dataset), "pixels", lambda self, i: seen.append(i) or real(self, i))
    dataset = load_dataset(root, "train", resolution=12)
    first_large = min(i for i, path in enumerate(dataset.paths) if Image.open(os.fsdecode(path)).width == 300)
    dataset.decode_once(progress=False)
    assert dataset.decoded is None and first_large < len(dataset) - 1
    assert len(seen) <= 4 + first_large + 1  # four samples, then decoding stopped at the first large image


def make_folder_of_size(root, side):
    for split in ("train", "val"):
        (root / split / "x").mkdir(parents=True)
        Image.fromarray(np.zeros((side, side, 3), dtype=np.uint8)).save(root / split / "x" / "0.png")
    return root


def test_random_erasing_sets_one_rectangle_to_the_mean():
    """Erasing p=1: every image keeps its un-erased pixels (the p=0 batch) except one rectangle set
    to 0, the mean after normalisation, whose area and aspect ratio lie in torchvision's ranges."""
    data = load_dataset("digits", "train")
    plain, erased = (make_loader(data, 128, train=True, seed=4, erasing=p) for p in (0.0, 1.0))
    for loader in (plain, erased):
        loader.set_epoch(1)
    (before, labels), (after, same_labels) = next(iter(plain)), next(iter(erased))
    assert torch.equal(labels, same_labels)
    changed = (before != after).any(dim=1)  # N x H x W
    assert torch.all(after.masked_select(changed[:, None].expand_as(after)) == 0)
    fractions, ratios = [], []
    for mask in changed:
        rows, columns = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
        if not len(rows):
            continue  # the rectangle fell on pixels that were already the mean
        box = mask[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
        fractions.append(box.numel() / mask.numel())
        ratios.append(box.shape[0] / box.shape[1])
    assert len(fractions) > 120
    assert 0.0 < min(fractions) and max(fractions) <= 0.33 + 0.05
    assert 0.3 / 1.5 <= min(ratios) and max(ratios) <= 3.3 * 1.5
    assert min(ratios) < 0.7 and max(ratios) > 1.4  # tall and wide rectangles both occur


def test_random_erasing_follows_seed_epoch_and_rank_and_never_touches_eval():
    data = load_dataset("digits", "test")
    single = make_loader(data, 360, train=True, seed=5, erasing=0.5)
    rank1 = make_loader(data, 120, train=True, seed=5, rank=1, world_size=3, erasing=0.5)
    single.set_epoch(2), rank1.set_epoch(2)
    (all_images, _), (images, _) = next(iter(single)), next(iter(rank1))
    assert torch.equal(images, all_images[1::3])
    plain = make_loader(data, 360, train=True, seed=5)
    plain.set_epoch(2)
    erased = (next(iter(plain))[0] != all_images).flatten(1).any(dim=1).float().mean().item()
    assert 0.35 < erased < 0.65  # about half the images, p = 0.5
    evaluation = [make_loader(data, 360, train=False, erasing=e) for e in (0.0, 1.0)]
    assert torch.equal(next(iter(evaluation[0]))[0], next(iter(evaluation[1]))[0])
    with pytest.raises(ValueError, match="random erasing"):
        make_loader(data, 360, train=True, erasing=1.5)
