"""``load_dataset``: the one entry point from a data name or path to a dataset object."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from mobilenet.cache import folder as default_root  # named datasets live in the cache folder
from mobilenet.data import cifar, mnist
from mobilenet.data.digits import load_digits
from mobilenet.data.folder import ImageFolder
from mobilenet.checks import check_resolution
from mobilenet.data.memory import CHANNELS, InMemoryDataset

SPLITS = {"train": "train", "val": "test", "test": "test"}  # val and test name the held-out split
HOLD_OUT_SEED = 0  # the validation split's draw: the same images whatever the run's seed
NAMED = ("digits", "cifar10", *mnist.DATASETS)  # what `data` names; anything else is a path
ALLOWED = (
    f"{', '.join(map(repr, NAMED))}, a cifar-10-python.tar.gz file, a cifar-10-batches-py folder "
    "or an image folder with train/ and val/"
)


def load_dataset(
    data: str | os.PathLike,
    split: str,
    *,
    classes: Sequence[str] | None = None,
    resolution: int | None = None,
    download: bool = False,
    root: str | os.PathLike | None = None,
    channels: int | None = None,
) -> InMemoryDataset | ImageFolder:
    """Load split ``"train"`` or ``"val"`` (alias ``"test"``) of ``data``.

    ``data`` is ``"digits"`` (embedded), ``"cifar10"``, ``"mnist"``, ``"fashion-mnist"`` or
    ``"kmnist"`` (looked up under ``root``, default ``default_root()``, and fetched there when
    ``download`` is true), a path to a CIFAR-10 archive or extracted folder, or a path to an image
    folder with ``train/`` and ``val/``. ``classes`` keeps only the named classes, relabelled 0,
    1, ... in the given order. ``resolution`` defaults to the data's own: 32 for digits and
    CIFAR-10, 28 for the MNIST family, an image folder's own where its images are small (else 224:
    ``folder.folder_defaults``). ``channels`` (1 or 3) converts the
    images (grey repeated, RGB to luma); by default they keep their own (1 for the MNIST family).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if resolution is not None:
        check_resolution(resolution)
    if isinstance(classes, str):
        raise ValueError(f"classes must be a list of names such as ['airplane', 'bird'], got {classes!r}")
    if channels is not None and channels not in CHANNELS:
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    dataset = _load(os.fspath(data), SPLITS[split], resolution, download, root, channels)
    return dataset if classes is None else dataset.select_classes(list(classes))


def split_name(dataset: InMemoryDataset | ImageFolder, split: str = "test") -> str:
    """What a split is called where it comes from: an image folder's held-out split is its `val/`
    folder (or `test/`), the named datasets' is their test split."""
    return dataset.split if isinstance(dataset, ImageFolder) else SPLITS[split]


def hold_out(dataset: InMemoryDataset | ImageFolder, fraction: float
             ) -> tuple[InMemoryDataset | ImageFolder, InMemoryDataset | ImageFolder]:
    """Split a training set into (train, validation): ``fraction`` of each class's images, drawn
    at random with a fixed generator, so that every run and seed of the same data is tuned on the
    same images and no test image is looked at. Per class, rounded to the nearest image, at least
    one held out and one kept, so a class with two images or more is in both (like a stratified
    `train_test_split`; Keras' `validation_split` takes the last images instead, which is one class
    of a folder sorted by class)."""
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    labels = torch.as_tensor(dataset.labels)
    generator = torch.Generator().manual_seed(HOLD_OUT_SEED)
    held = []
    for label in range(len(dataset.classes)):
        members = torch.nonzero(labels == label).flatten()
        if len(members) < 2:
            continue
        count = min(max(1, round(fraction * len(members))), len(members) - 1)
        held.append(members[torch.randperm(len(members), generator=generator)[:count]])
    if not held:
        raise ValueError("no class has two images to split between training and validation")
    take = torch.zeros(len(labels), dtype=torch.bool)
    take[torch.cat(held)] = True
    return dataset.subset(torch.nonzero(~take).flatten().numpy()), dataset.subset(torch.nonzero(take).flatten().numpy())


def fingerprint(*datasets: InMemoryDataset | ImageFolder) -> str:
    """What identifies the images and labels of `datasets` (a run's splits), for a resumed run to
    check that it goes on with the data it started with: for data held in memory, a SHA-256 of its
    classes, pixels and labels; for an image folder, of its classes and of each file's path (from
    the folder's root), size and label, so that a copied or moved folder is the same data and a
    folder whose files changed is not."""
    digest = hashlib.sha256()
    for dataset in datasets:
        digest.update(json.dumps(list(dataset.classes)).encode() + b"\0")
        if isinstance(dataset, ImageFolder):
            root = os.fsencode(dataset.root)
            for path, label in zip(dataset.paths, dataset.labels):
                relative = path[len(root):] if path.startswith(root) else path
                digest.update(relative + f"\0{os.stat(path).st_size}\0{int(label)}\0".encode())
        else:
            digest.update(dataset.images.contiguous().numpy().data)
            digest.update(dataset.labels.contiguous().numpy().data)
    return digest.hexdigest()[:32]


def _load(data: str, split: str, resolution: int | None, download: bool,
          root: str | os.PathLike | None, channels: int | None) -> InMemoryDataset | ImageFolder:
    """Dispatch on the name or on what is found at the path (``split`` is ``"train"`` or ``"test"``)."""
    if data == "digits":
        dataset = load_digits(split, resolution or 32)
    elif data == "cifar10":
        dataset = cifar.load_cifar10(_find_cifar10(Path(root) if root else default_root(), download), split,
                                     resolution or 32)
    elif data in mnist.DATASETS:
        dataset = mnist.load_idx_dataset(data, split, Path(root) if root else default_root(),
                                         resolution or mnist.RESOLUTION, download)
    else:
        return _load_path(data, split, resolution, channels)
    return dataset if channels is None else dataset.with_channels(channels)


def _load_path(data: str, split: str, resolution: int | None, channels: int | None) -> InMemoryDataset | ImageFolder:
    """A CIFAR-10 archive or folder, or an image folder (whose defaults come from its images:
    `folder.folder_defaults`), at the path `data`."""
    path = Path(data).expanduser()
    if path.is_file() or (path.is_dir() and (path / cifar.META).is_file()):
        return cifar.load_cifar10(path, split, resolution or 32).with_channels(channels or 3)
    if path.is_dir():
        return ImageFolder(path, "train" if split == "train" else "val", resolution, channels)
    if os.sep in data or data.startswith((".", "~")) or data.endswith((".tar.gz", ".tgz")):
        raise FileNotFoundError(f"no dataset at {path}; expected {ALLOWED}")
    raise ValueError(f"unknown dataset {data!r}; expected {ALLOWED}")


def _find_cifar10(root: Path, download: bool) -> Path:
    """The extracted folder or archive of CIFAR-10 under ``root``, downloading it if asked."""
    if download:
        return cifar.download_cifar10(root)
    for candidate in (root / cifar.FOLDER, root / cifar.ARCHIVE):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"CIFAR-10 not found in {root}: add --download to fetch it (download=True in Python), "
        f"or put {cifar.ARCHIVE} there"
    )
