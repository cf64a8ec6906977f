"""The MNIST family from the official IDX files: MNIST, Fashion-MNIST and Kuzushiji-MNIST.

The IDX format (Y. LeCun, http://yann.lecun.com/exdb/mnist/, "the IDX file format"): a 4-byte
magic number, two zero bytes, a type code (0x08 unsigned byte, 0x09 signed byte, 0x0B short,
0x0C int, 0x0D float, 0x0E double) and the number of dimensions; then each dimension's size as a
big-endian 32-bit integer; then the values, big-endian, in C order. Each dataset is four files,
`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
`t10k-labels-idx1-ubyte`, gzip-compressed as published (`.gz`) or not: both are read.

Datasets, their files and checksums and their class names are those of torchvision's `MNIST`,
`FashionMNIST` and `KMNIST`. They are found under `ROOT/<name>/` (ROOT: `--data-root`,
`$MOBILENET_DATA` or `~/.cache/mobilenet`), or where the Debian package installs them
(`dataset-fashion-mnist`: /usr/share/datasets/fashion-mnist), and `download` fetches the official
files there, each checked against its md5 and renamed into place only then.

The images are held in memory as one uint8 `N x 1 x 28 x 28` tensor (grayscale, their native
size; another resolution is a resize done once here), 60,000 for training and 10,000 for test.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mobilenet import files
from mobilenet.checks import check_resolution
from mobilenet.data.memory import InMemoryDataset, resize_uint8

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
RESOLUTION = 28


@dataclass(frozen=True)
class IdxDataset:
    """One member of the family: where it is published, its files' md5, its classes and statistics."""

    name: str  # as `--data` takes it, and the folder under the data root
    mirrors: tuple[str, ...]
    md5: dict[str, str]  # of the published .gz files
    classes: tuple[str, ...]
    mean: float  # of the training images, 0..1 scale (torchvision's usual normalisation values)
    std: float
    flip: bool  # whether a mirrored image is still of its class: clothes are, digits and characters not
    system_folders: tuple[str, ...] = ()


DATASETS = {
    "mnist": IdxDataset(
        "mnist", ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        {"train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
         "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
         "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c"},
        ("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
         "8 - eight", "9 - nine"),
        0.1307, 0.3081, flip=False, system_folders=("/usr/share/datasets/mnist",)),
    "fashion-mnist": IdxDataset(
        "fashion-mnist", ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {"train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
         "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
         "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310"},
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        0.2860, 0.3530, flip=True, system_folders=("/usr/share/datasets/fashion-mnist",)),
    "kmnist": IdxDataset(
        "kmnist", ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        {"train-images-idx3-ubyte": "bdb82020997e1d708af4cf47b453dcf7",
         "train-labels-idx1-ubyte": "e144d726b3acfaa3e44228e80efcd344",
         "t10k-images-idx3-ubyte": "5c965bf0a639b31b8f53240b1b52f4d7",
         "t10k-labels-idx1-ubyte": "7320c461ea6c1c855c0b718fb2a4b134"},
        ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        0.1918, 0.3483, flip=False),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array in an IDX file, gzip-compressed or not; ValueError naming the file for a wrong
    magic number, an unknown type, a truncated file or bytes left over."""
    path = Path(path)
    files.require_regular(path, "IDX file")
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise ValueError(f"{path} is not a readable IDX file: {error}") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file: wrong magic number {data[:4].hex() or '(empty)'}")
    dims = data[3]
    header = 4 + 4 * dims
    if len(data) < header:
        raise ValueError(f"{path} is truncated: its header promises {dims} dimensions")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    dtype = np.dtype(IDX_TYPES[data[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "longer than its header says"
        raise ValueError(f"{path} is {problem}: {len(data)} bytes for shape {shape}, expected {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_file(folder: Path, name: str) -> Path | None:
    """`name` or `name.gz` in `folder`, whichever exists (a regular file; see `read_split` for both)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_one_of(folder: Path, name: str) -> tuple[Path, np.ndarray]:
    """The array of `name` in `folder`, raw or `.gz`; where both are there they must hold the same
    array (ValueError naming both otherwise: which one is right is the user's to say)."""
    path = find_file(folder, name)
    array = read_idx(path)
    packed = folder / f"{name}.gz"
    if path != packed and packed.is_file():
        other = read_idx(packed)
        if other.shape != array.shape or other.dtype != array.dtype or not np.array_equal(other, array):
            raise ValueError(f"{path} and {packed} hold different data: delete the one that is wrong")
    return path, array


def find_folder(dataset: IdxDataset, root: Path) -> Path | None:
    """The first folder holding all four files: `root/<name>`, then the system's. A folder under
    the root that holds some of them but not all is an error naming the first one missing."""
    names = [name for pair in FILES.values() for name in pair]
    own = root / dataset.name
    missing = [name for name in names if not find_file(own, name)]
    if own.is_dir() and missing and len(missing) < len(names):
        raise FileNotFoundError(f"{own / missing[0]}(.gz) is missing: {dataset.name} needs {', '.join(names)}")
    if not missing:
        return own
    for folder in map(Path, dataset.system_folders):
        if all(find_file(folder, name) for name in names):
            return folder
    return None


def download_idx(dataset: IdxDataset, root: Path) -> Path:
    """Fetch the four published `.gz` files into `root/<name>` (those present are kept once their
    md5 is checked), trying each mirror; returns the folder."""
    folder = root / dataset.name
    folder.mkdir(parents=True, exist_ok=True)
    for name, md5 in dataset.md5.items():
        target = folder / f"{name}.gz"
        if target.is_file():
            actual = files.file_digest(target, "md5")
            if actual != md5:
                raise ValueError(f"{target} has md5 {actual}, expected {md5}; delete it to download again")
            continue

        def verify(_: Path, actual: str, md5: str = md5, name: str = name) -> None:
            if actual != md5:
                raise ValueError(f"checksum mismatch for {name}.gz: expected md5 {md5}, got {actual}")

        errors = []
        for mirror in dataset.mirrors:
            try:
                files.download(mirror + target.name, target, algorithm="md5", verify=verify)
                break
            except OSError as error:
                errors.append(str(error))
        else:
            raise OSError(f"could not download {target.name} from any mirror: {'; '.join(errors)}")
    return folder


def load_idx_dataset(name: str, split: str, root: str | os.PathLike, resolution: int = RESOLUTION,
                     download: bool = False) -> InMemoryDataset:
    """Split `"train"` or `"test"` of `name` (mnist, fashion-mnist, kmnist) as uint8 grayscale."""
    dataset = DATASETS[name]
    if split not in FILES:
        raise ValueError(f"{name} split must be 'train' or 'test', got {split!r}")
    check_resolution(resolution)
    root = Path(root).expanduser()
    folder = download_idx(dataset, root) if download else find_folder(dataset, root)
    if folder is None:
        places = ", ".join(str(p) for p in (root / dataset.name, *dataset.system_folders))
        raise FileNotFoundError(f"{name} not found (looked in {places}): add --download to fetch it, or put its "
                                f"four IDX files in {root / dataset.name}")
    (images_file, images), (labels_file, labels) = (read_one_of(folder, file) for file in FILES[split])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_file} holds {images.dtype} of shape {images.shape}, not uint8 N x H x W images")
    if not images.shape[0]:
        raise ValueError(f"{images_file} holds no images")
    if not images.shape[1] or not images.shape[2]:
        raise ValueError(f"{images_file} holds images of {images.shape[1]} x {images.shape[2]} pixels")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{labels_file} holds {labels.dtype} of shape {labels.shape}, not N whole-number labels")
    if len(images) != len(labels):
        raise ValueError(f"{images_file} has {len(images)} images but {labels_file} has {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(dataset.classes)):
        raise ValueError(f"{labels_file} has labels outside 0..{len(dataset.classes) - 1}")
    tensor = resize_uint8(torch.from_numpy(images.copy()).unsqueeze(1), resolution)
    return InMemoryDataset(tensor, torch.from_numpy(labels.astype(np.int64)), list(dataset.classes),
                           (dataset.mean,), (dataset.std,), flip=dataset.flip)


__all__ = ["DATASETS", "IdxDataset", "download_idx", "find_folder", "load_idx_dataset", "read_idx"]
