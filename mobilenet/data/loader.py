"""Loaders that yield normalised float batches, reproducible from (seed, epoch) and shardable by rank.

Both loaders share one interface, which is what the trainer relies on:

* iterating yields ``(images, labels)``: float32 ``N x 3 x H x W`` normalised with the dataset's
  ``mean`` and ``std``, and int64 ``N``;
* ``train=True`` shuffles, augments and drops the last partial batch; ``train=False`` keeps the
  dataset order, does not augment and keeps the last partial batch;
* ``set_epoch(epoch)`` selects the epoch: its order and augmentation depend only on
  ``(seed, epoch)``, so a run resumed at epoch ``e`` sees exactly the batches it would have seen;
* ``rank`` / ``world_size`` shard the data for distributed training (see ``shard``);
* ``len(loader)`` is the number of batches this rank yields in one epoch.

In-memory datasets (digits, CIFAR-10) are augmented a whole batch at once with tensor indexing:
a random 32x32 crop of the image zero-padded by 4 pixels, and a horizontal flip with probability
1/2. Image folders are decoded and augmented per image in DataLoader worker processes. Both can
add random erasing (``erasing``, see ``RandomErasing``) to the normalised training batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from mobilenet.checks import whole_number
from mobilenet.data.folder import ImageFolder
from mobilenet.data.memory import InMemoryDataset

PAD = 4  # pixels of zero padding around in-memory images before the random crop
ERASING_STREAM = 1  # random erasing draws from its own generator, so it leaves the other draws as they were


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The random generator of one epoch: a function of ``(seed, epoch)`` only (via SeedSequence)."""
    return np.random.default_rng([seed, epoch])


def shard(order: np.ndarray, rank: int, world_size: int, *, pad: bool) -> np.ndarray:
    """The part of one epoch's sample ``order`` that belongs to ``rank``.

    Like ``torch.utils.data.DistributedSampler``, every rank takes every ``world_size``-th element
    of the same order, starting at its rank, so the shards are disjoint. For training (``pad``)
    the order is first extended with its own beginning to a multiple of ``world_size`` so that all
    ranks get the same number of samples and step in lockstep. For evaluation nothing is
    repeated: the shards cover every sample exactly once and may differ in size by one.
    """
    if pad:
        total = math.ceil(len(order) / world_size) * world_size
        order = np.resize(order, total)  # np.resize repeats the array cyclically
    return order[rank::world_size]


def pad_crop_flip(images: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Crop each image from its ``PAD``-pixel zero-padded copy and flip it, for a whole batch at once.

    ``shifts`` (``N x 2``, values ``0..2*PAD``) are each crop's top and left corner in the padded
    image; ``flips`` (``N``, bool) mirror the crop horizontally. One gather does both: the row and
    column indices of every output pixel are computed for the batch, with flipped columns read
    right to left.
    """
    n, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD))
    rows = shifts[:, 0, None] + torch.arange(height)  # N x H
    columns = torch.arange(width).expand(n, width)
    columns = torch.where(flips[:, None], width - 1 - columns, columns) + shifts[:, 1, None]  # N x W
    batch = torch.arange(n)[:, None, None]
    # Advanced indexing around the channel slice gives N x H x W x C; permute back to N x C x H x W.
    return padded[batch, :, rows[:, :, None], columns[:, None, :]].permute(0, 3, 1, 2)


class Normalize:
    """uint8 batches to float32, scaled to 0..1 and normalised with a dataset's mean and std."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool) -> None:
        self.shift = torch.tensor(mean).view(1, -1, 1, 1) * 255
        self.scale = torch.tensor(std).view(1, -1, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.contiguous(memory_format=self.memory_format)
        return images.float().sub_(self.shift).div_(self.scale)


class RandomErasing:
    """Random erasing (Zhong et al. 2017) of whole normalised batches, with torchvision's rule.

    Each training image is erased with probability ``p``: a rectangle covering a fraction of the
    image drawn from ``SCALE``, its aspect ratio log-uniform in ``RATIO``, placed uniformly, is set
    to 0, which after normalisation is the dataset's mean (torchvision's ``RandomErasing(value=0)``
    after ``Normalize``). Up to ``ATTEMPTS`` rectangles are drawn per image and the first that fits
    is used; if none fits the image is left alone. All draws are made per position of the epoch's
    order from ``(seed, epoch)``, before sharding, and are kept as fractions, so an image is erased
    alike whatever its rank, batch or resolution.
    """

    SCALE = (0.02, 0.33)
    RATIO = (0.3, 3.3)
    ATTEMPTS = 10

    def __init__(self, p: float, seed: int, epoch: int, size: int) -> None:
        rng = np.random.default_rng([seed, epoch, ERASING_STREAM])
        self.apply = rng.random(size) < p
        self.area = rng.uniform(*self.SCALE, size=(size, self.ATTEMPTS))
        self.log_ratio = rng.uniform(math.log(self.RATIO[0]), math.log(self.RATIO[1]), size=(size, self.ATTEMPTS))
        self.corner = rng.random((size, self.ATTEMPTS, 2))

    def __call__(self, images: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
        """Erase, in place, the images at these positions of the epoch's order."""
        height, width = images.shape[-2:]
        area = self.area[positions] * height * width
        ratio = np.exp(self.log_ratio[positions])
        h = np.rint(np.sqrt(area * ratio)).astype(np.int64)
        w = np.rint(np.sqrt(area / ratio)).astype(np.int64)
        fits = (h < height) & (w < width)
        attempt = fits.argmax(axis=1)  # the first that fits (0 if none does; `erase` then says no)
        rows = np.arange(len(positions))
        h, w, corner = h[rows, attempt], w[rows, attempt], self.corner[positions][rows, attempt]
        erase = self.apply[positions] & fits[rows, attempt]
        top = np.floor(corner[:, 0] * (height - h + 1)).astype(np.int64)
        left = np.floor(corner[:, 1] * (width - w + 1)).astype(np.int64)
        as_tensor = lambda a: torch.from_numpy(a)[:, None]  # noqa: E731
        y, x = torch.arange(height), torch.arange(width)
        inside_rows = (y >= as_tensor(top)) & (y < as_tensor(top + h))  # N x H
        inside_columns = (x >= as_tensor(left)) & (x < as_tensor(left + w))  # N x W
        mask = inside_rows[:, :, None] & inside_columns[:, None, :] & torch.from_numpy(erase)[:, None, None]
        return images.masked_fill_(mask[:, None], 0.0)


class _ShardedLoader:
    """What both loaders share: arguments, the epoch, the per-rank sample order and random erasing."""

    def __init__(self, size: int, batch_size: int, train: bool, seed: int, rank: int,
                 world_size: int, erasing: float = 0.0) -> None:
        if not 0 <= erasing <= 1:
            raise ValueError(f"random erasing probability must be in [0, 1], got {erasing}")
        self.erasing = erasing if train else 0.0
        whole_number(batch_size, "batch_size")
        whole_number(seed, "seed", minimum=0)
        whole_number(world_size, "world_size")
        whole_number(rank, "rank", minimum=0, maximum=world_size - 1)
        self.size, self.batch_size, self.train = size, batch_size, train
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        if train and len(self) == 0:
            per_rank = self._samples_per_rank()
            raise ValueError(
                f"batch_size {batch_size} is larger than the {per_rank} training samples per rank; "
                f"use a batch size of at most {per_rank}"
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration yields."""
        whole_number(epoch, "epoch", minimum=0)
        self.epoch = epoch

    def _samples_per_rank(self) -> int:
        if self.train:
            return math.ceil(self.size / self.world_size)
        return len(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        if self.train:
            return self._samples_per_rank() // self.batch_size
        return math.ceil(self._samples_per_rank() / self.batch_size)

    def _positions(self) -> np.ndarray:
        """This rank's positions in the epoch's order of all samples (see ``shard``)."""
        return shard(np.arange(self.size), self.rank, self.world_size, pad=self.train)

    def _indices(self, rng: np.random.Generator) -> np.ndarray:
        """This rank's sample indices: its share of the epoch's order (drawn from ``rng`` in training)."""
        order = rng.permutation(self.size) if self.train else np.arange(self.size)
        return order[self._positions()]

    def _batches(self, indices: np.ndarray) -> list[np.ndarray]:
        """``indices`` cut into batches: ``len(self)`` of them (a partial last one only in eval)."""
        return [indices[i * self.batch_size : (i + 1) * self.batch_size] for i in range(len(self))]

    def _finish(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalise uint8 batches (in this rank's order) and erase at random where asked."""
        erase = RandomErasing(self.erasing, self.seed, self.epoch, self.size) if self.erasing else None
        positions = self._positions()
        for number, (images, labels) in enumerate(batches):
            images = self.normalize(images)
            if erase is not None:
                erase(images, positions[number * self.batch_size : number * self.batch_size + len(images)])
            yield images, labels


class InMemoryLoader(_ShardedLoader):
    """Batches of an ``InMemoryDataset``, augmented a batch at a time (see ``pad_crop_flip``).

    The crop and flip of every position of the epoch's order are drawn before sharding, so they
    depend on ``(seed, epoch)`` and the position only: rank r of ``world_size`` w yields exactly
    positions r, r + w, ... of what a single process would yield.
    """

    def __init__(self, dataset: InMemoryDataset, batch_size: int, *, train: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False, mean=None, std=None,
                 erasing: float = 0.0) -> None:
        self.dataset = dataset
        self.normalize = Normalize(mean or dataset.mean, std or dataset.std, channels_last)
        super().__init__(len(dataset), batch_size, train, seed, rank, world_size, erasing)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._finish(self._uint8_batches())

    def _uint8_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = epoch_rng(self.seed, self.epoch)
        indices = self._indices(rng)
        if self.train:  # one crop corner and flip per position of the epoch, then this rank's share
            shifts = rng.integers(0, 2 * PAD + 1, size=(self.size, 2))[self._positions()]
            flips = (rng.random(self.size) < 0.5)[self._positions()] & self.dataset.flip
        for number, batch in enumerate(self._batches(indices)):
            index = torch.from_numpy(batch)
            images = self.dataset.images[index]
            if self.train:
                part = slice(number * self.batch_size, number * self.batch_size + len(batch))
                images = pad_crop_flip(images, torch.from_numpy(shifts[part]), torch.from_numpy(flips[part]))
            yield images, self.dataset.labels[index]


class _FolderBatches(torch.utils.data.Sampler):
    """This rank's batches of one epoch as lists of ``(index, seed, epoch)`` keys for ``_FolderItems``.

    It runs in the main process, where ``set_epoch`` was called; the keys carry the epoch to the
    worker processes, which hold copies of the dataset made before the epoch was set.
    """

    def __init__(self, loader: FolderLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        loader = self.loader
        for batch in loader._batches(loader._indices(epoch_rng(loader.seed, loader.epoch))):
            yield [(int(index), loader.seed, loader.epoch) for index in batch]


class _FolderItems(torch.utils.data.Dataset):
    """An ``ImageFolder`` seen through ``(index, seed, epoch)`` keys, augmented when training."""

    def __init__(self, folder: ImageFolder, train: bool) -> None:
        self.folder, self.train = folder, train

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        index, seed, epoch = key
        if not self.train:
            return self.folder.load(index)
        return self.folder.load(index, train=True, rng=np.random.default_rng([seed, epoch, index]))


class FolderLoader(_ShardedLoader):
    """Batches of an ``ImageFolder``, decoded and augmented in ``workers`` DataLoader processes
    (in this process for a folder of small images, which is decoded once, up front).

    Each image's random crop and flip are drawn from ``(seed, epoch, index)``, so they do not
    depend on which worker decodes it. Images travel from the workers as uint8 (4x less than
    float) and are normalised in the main process.
    """

    def __init__(self, dataset: ImageFolder, batch_size: int, *, train: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, workers: int = 2, channels_last: bool = False, mean=None, std=None,
                 erasing: float = 0.0) -> None:
        whole_number(workers, "workers", minimum=0)
        dataset.decode_once()  # small images: decoded here, once
        if dataset.decoded is not None:
            # their transforms are cheap; worker processes would only take cores from the training
            # step (benchmarks/folder_cache.py measures a folder of small PNGs both ways)
            workers = 0
        self.dataset = dataset
        self.normalize = Normalize(mean or dataset.mean, std or dataset.std, channels_last)
        super().__init__(len(dataset), batch_size, train, seed, rank, world_size, erasing)
        self.loader = torch.utils.data.DataLoader(
            _FolderItems(dataset, train), batch_sampler=_FolderBatches(self), num_workers=workers
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._finish(iter(self.loader))


def make_loader(dataset: InMemoryDataset | ImageFolder, batch_size: int, *, train: bool, seed: int = 0,
                rank: int = 0, world_size: int = 1, workers: int = 2, channels_last: bool = False,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                erasing: float = 0.0) -> InMemoryLoader | FolderLoader:
    """The loader for ``dataset``: batched in-memory augmentation, or DataLoader workers for folders.

    ``workers`` only matters for image folders; in-memory datasets need no worker processes.
    ``mean`` and ``std`` normalise the batches (default: the dataset's own; a pretrained model
    brings its own). ``erasing`` is the probability of random erasing in training (``RandomErasing``).
    """
    common = dict(train=train, seed=seed, rank=rank, world_size=world_size, channels_last=channels_last,
                  mean=mean, std=std, erasing=erasing)
    if isinstance(dataset, InMemoryDataset):
        return InMemoryLoader(dataset, batch_size, **common)
    if isinstance(dataset, ImageFolder):
        return FolderLoader(dataset, batch_size, workers=workers, **common)
    raise ValueError(f"make_loader needs a dataset from load_dataset, got {type(dataset).__name__}")
