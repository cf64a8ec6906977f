"""CIFAR-10 from its official python-format archive, read safely and downloaded atomically.

The archive ``cifar-10-python.tar.gz`` (A. Krizhevsky, 2009, https://www.cs.toronto.edu/~kriz/cifar.html)
holds ``cifar-10-batches-py/`` with five training batches, one test batch and ``batches.meta``.
Each batch is a Python 2 pickle of a dict with bytes keys: ``b"data"``, a uint8 ``N x 3072``
array (1,024 red, then green, then blue values of a 32x32 image), and ``b"labels"``, a list of N
ints. Data can be read from the archive itself or from its extracted folder.

Safety: a pickle can run arbitrary code when loaded, so the batches are read with an unpickler
that can only rebuild numpy arrays and refuses every other global. Downloads and extraction write
to a temporary name in the destination folder and are renamed into place only once complete and
verified, so an interrupted or corrupt download never leaves a file that looks finished.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from mobilenet import files
from mobilenet.checks import check_resolution
from mobilenet.data.memory import InMemoryDataset, resize_uint8

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]
META = "batches.meta"
REQUIRED = [*TRAIN_BATCHES, *TEST_BATCHES, META]
# Per-channel statistics of the training split (0..1 scale), the values used across the literature.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

# The only globals a pickled numpy array needs. They are resolved here, from the running numpy,
# rather than imported by name, so that files written under numpy 1 (``numpy.core``) and numpy 2
# (``numpy._core``) both load without touching numpy's deprecated module paths.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class UnsafePickleError(ValueError):
    """A pickle referenced something other than numpy's array-building globals."""


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and refuses every other global, so that loading data never runs code."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle {self.source}: it references {module}.{name}, "
                "but only numpy arrays (numpy _reconstruct, ndarray, dtype) are allowed"
            ) from None


def unpickle_batch(data: bytes, source: str) -> dict:
    """Load one CIFAR pickle from bytes with the numpy-only unpickler; ``source`` names it in errors."""
    try:
        loaded = NumpyOnlyUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as error:  # a truncated or garbled pickle raises many different types
        raise ValueError(f"{source} is not a readable CIFAR-10 pickle: {error}") from error
    if not isinstance(loaded, dict):
        raise ValueError(f"{source} should hold a dict, got {type(loaded).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in loaded.items()}


def _batch_arrays(batch: dict, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 N x 3 x 32 x 32) and labels (int64 N) of one unpickled batch, checked."""
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{source}: 'data' must be a uint8 N x 3072 array")
    if not isinstance(labels, list) or len(labels) != len(data):
        raise ValueError(f"{source}: 'labels' must be a list of {len(data)} ints")
    labels_array = np.asarray(labels, dtype=np.int64)
    if labels_array.size and (labels_array.min() < 0 or labels_array.max() > 9):
        raise ValueError(f"{source}: labels must lie in 0..9")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # copy: own, writable memory
    return images, torch.from_numpy(labels_array)


def _class_names(meta: dict, source: str) -> list[str]:
    """The ten class names of ``batches.meta``, as str (Python 2 pickles give bytes)."""
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise ValueError(f"{source}: 'label_names' must be a list of 10 names")
    return [name.decode("utf-8") if isinstance(name, bytes) else str(name) for name in names]


def _safe_member_name(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    """The member's path, refusing absolute paths and ``..`` (path traversal) with a ValueError."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise ValueError(f"unsafe path {member.name!r} in {archive}: members must stay inside the archive")
    return name


def read_archive_files(archive: Path, names: list[str]) -> dict[str, bytes]:
    """The contents of the files ``cifar-10-batches-py/<name>`` of ``archive``, by name.

    Only regular files with the given names are read; a member with an absolute or ``..`` path
    makes the whole archive suspect and raises ValueError. Nothing is written to disk.
    """
    contents: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = _safe_member_name(member, archive)
                if member.isfile() and name.parent == PurePosixPath(FOLDER) and name.name in names:
                    contents[name.name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ValueError(f"{archive} is not a readable CIFAR-10 tar archive: {error}") from error
    missing = [name for name in names if name not in contents]
    if missing:
        raise ValueError(f"{archive} lacks {FOLDER}/{missing[0]} (CIFAR-10 has {', '.join(REQUIRED)})")
    return contents


def extract_archive(archive: Path, root: Path) -> Path:
    """Extract the CIFAR-10 files of ``archive`` to ``root/cifar-10-batches-py``, atomically.

    The files are written to a temporary folder inside ``root`` and the folder is renamed into
    place at the end, so a half-extracted folder never exists under the final name.
    """
    final = root / FOLDER
    contents = read_archive_files(archive, REQUIRED)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{FOLDER}.", suffix=".part"))
    try:
        for name, data in contents.items():
            (staging / name).write_bytes(data)
        staging.chmod(0o755)  # mkdtemp makes folders private; a data folder may be shared
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if final.is_dir() and all((final / name).is_file() for name in REQUIRED):
            return final  # another process finished the same extraction first
        raise
    return final


def download(url: str, destination: Path, md5: str) -> Path:
    """Fetch ``url`` to ``destination`` with a progress bar, verify its md5, then rename into place;
    on a mismatch, an error or an interruption nothing is left behind (``mobilenet.files.download``)."""

    def verify(_: Path, actual: str) -> None:
        if actual != md5.lower():
            raise ValueError(f"checksum mismatch for {url}: expected md5 {md5}, got {actual}")

    files.download(url, destination, algorithm="md5", verify=verify)
    return destination


def download_cifar10(root: str | os.PathLike, url: str = URL, md5: str = MD5) -> Path:
    """Make sure ``root/cifar-10-batches-py`` exists, downloading and extracting as needed.

    An archive already in ``root`` is reused if its md5 matches (a mismatch raises ValueError
    rather than silently overwriting it). Returns the path of the extracted folder.
    """
    root = Path(root).expanduser()
    folder = root / FOLDER
    if folder.is_dir():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    archive = root / ARCHIVE
    if archive.is_file():
        actual = files.file_digest(archive, "md5")
        if actual != md5.lower():
            raise ValueError(f"{archive} has md5 {actual}, expected {md5}; delete it to download again")
    else:
        download(url, archive, md5)
    return extract_archive(archive, root)


def _read_folder_files(folder: Path, names: list[str]) -> dict[str, bytes]:
    """The contents of the files ``names`` of an extracted ``cifar-10-batches-py`` folder."""
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing[0]} (a CIFAR-10 folder has {', '.join(REQUIRED)})")
    return {name: (folder / name).read_bytes() for name in names}


def load_cifar10(path: str | os.PathLike, split: str, resolution: int = 32) -> InMemoryDataset:
    """CIFAR-10's ``"train"`` (50,000 images) or ``"test"`` (10,000) split, from archive or folder.

    ``path`` is ``cifar-10-python.tar.gz`` or the ``cifar-10-batches-py`` folder. Images other than
    32x32 are resized once, here, bilinearly with antialiasing (the resolution multiplier).
    """
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    check_resolution(resolution)
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no CIFAR-10 archive or folder at {path}")
    batches = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    read = _read_folder_files if path.is_dir() else read_archive_files
    contents = read(path, [*batches, META])
    sources = {name: f"{path}/{name}" for name in contents}  # how errors name each file
    parts = [_batch_arrays(unpickle_batch(contents[name], sources[name]), sources[name]) for name in batches]
    classes = _class_names(unpickle_batch(contents[META], sources[META]), sources[META])
    images = torch.cat([images for images, _ in parts])
    labels = torch.cat([labels for _, labels in parts])
    return InMemoryDataset(resize_uint8(images, resolution), labels, classes, MEAN, STD)
