"""Datasets and loaders: embedded digits, CIFAR-10, ImageNet-layout image folders.

``load_dataset(data, split, ...)`` returns a dataset with ``classes``, ``mean``, ``std``,
``resolution`` and ``len()``; ``make_loader(dataset, batch_size, train=...)`` returns an iterable
of ``(float32 normalised N x 3 x H x W images, int64 labels)`` batches with ``set_epoch``,
``len()`` and rank sharding. Datasets hold and return uint8 images; normalisation is the loader's.
This package knows nothing of models or training.
"""

from mobilenet.data.cifar import download_cifar10, load_cifar10
from mobilenet.data.digits import load_digits
from mobilenet.data.folder import ImageFolder, decode_image
from mobilenet.data.load import default_root, load_dataset
from mobilenet.data.loader import FolderLoader, InMemoryLoader, make_loader
from mobilenet.data.memory import InMemoryDataset

__all__ = [
    "FolderLoader",
    "ImageFolder",
    "InMemoryDataset",
    "InMemoryLoader",
    "decode_image",
    "default_root",
    "download_cifar10",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "make_loader",
]
