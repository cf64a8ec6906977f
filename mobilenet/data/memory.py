"""Small datasets held in memory as one uint8 tensor, and the class filter shared by all datasets.

Digits and CIFAR-10 fit in memory many times over (CIFAR-10's training split is 150 MB as uint8),
so they are kept as a single ``N x C x H x W`` uint8 tensor (C = 3 for colour, 1 for grayscale) and
augmented a whole batch at a time by the loader (``mobilenet.data.loader``), not image by image
through a ``Dataset``.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def _listing(names: Sequence[str], limit: int = 20) -> str:
    """``names`` joined for an error message, cut after ``limit`` (ImageNet has 1,000 classes)."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


def class_positions(available: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Positions in ``available`` of the class names in ``wanted``, in the order given.

    This is the one class filter of the package: the kept classes are renumbered 0, 1, ... in the
    order the user wrote them, so ``["airplane", "bird"]`` makes airplane 0 and bird 1.
    """
    if len(wanted) == 0:
        raise ValueError(f"classes must name at least one class; available: {_listing(available)}")
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise ValueError(
            f"unknown class name(s) {', '.join(map(repr, unknown))}; available: {_listing(available)}"
        )
    repeated = sorted({name for name in wanted if list(wanted).count(name) > 1})
    if repeated:
        raise ValueError(f"class name(s) given more than once: {', '.join(map(repr, repeated))}")
    return [list(available).index(name) for name in wanted]


def resize_uint8(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize a uint8 ``N x C x H x W`` batch to ``resolution`` squared (bilinear, antialiased)."""
    if images.shape[-2:] == (resolution, resolution):
        return images
    resized = F.interpolate(
        images.float(), size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.round_().clamp_(0, 255).to(torch.uint8)


# ITU-R BT.601 luma, the grey of Pillow's "L" mode and torchvision's Grayscale: one rule for every path
LUMA = (0.299, 0.587, 0.114)
CHANNELS = (1, 3)


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """A uint8 ``N x C x H x W`` batch with ``channels`` channels: grey repeated to RGB, RGB to luma."""
    if channels not in CHANNELS:
        raise ValueError(f"images have 1 (grayscale) or 3 (RGB) channels, not {channels}")
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    grey = (images.float() * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return grey.round_().clamp_(0, 255).to(torch.uint8)


def stats_to_channels(values: Sequence[float], channels: int) -> tuple[float, ...]:
    """Per-channel mean or std for `channels`: repeated, or luma-weighted (exact for a mean,
    a close reading for a std)."""
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if channels == 3:
        return values * 3
    return (sum(w * v for w, v in zip(LUMA, values)),)


@dataclass(frozen=True)
class InMemoryDataset:
    """Images as one uint8 ``N x C x H x W`` tensor (C = 1 or 3), int64 labels, and what is needed to use them.

    ``mean`` and ``std`` are per-channel statistics on the 0..1 scale, used by the loader to
    normalise. Indexing returns ``(uint8 image, int label)`` so that the object also works with
    anything expecting a map-style dataset, but training goes through the batched loader.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool = True  # whether a mirrored image is still an image of its class (not for digits)
    crop_fraction = 1.0  # evaluated whole: what `predict` does with a file for a model trained on these

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] not in CHANNELS:
            shape = tuple(self.images.shape)
            raise ValueError(f"images must be a uint8 N x C x H x W tensor with C = 1 or 3, got {self.images.dtype} "
                             f"{shape}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need one value per channel ({self.channels})")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"expected {len(self.images)} labels, got shape {tuple(self.labels.shape)}")

    @property
    def resolution(self) -> int:
        """Side of the (square) images in pixels."""
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def with_channels(self, channels: int) -> InMemoryDataset:
        """The same images with `channels` channels (see `to_channels`), their statistics to match."""
        if channels == self.channels:
            return self
        return dataclasses.replace(self, images=to_channels(self.images, channels),
                                   mean=stats_to_channels(self.mean, channels), std=stats_to_channels(self.std, channels))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def subset(self, indices: np.ndarray) -> InMemoryDataset:
        """The images at ``indices`` (a 1-D integer array), in that order."""
        return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])

    def select_classes(self, names: Sequence[str]) -> InMemoryDataset:
        """A copy keeping only the classes ``names``, renumbered from 0 in the order given."""
        positions = class_positions(self.classes, names)
        relabel = torch.full((len(self.classes),), -1, dtype=torch.int64)
        relabel[positions] = torch.arange(len(positions))
        new_labels = relabel[self.labels]
        keep = new_labels >= 0
        return InMemoryDataset(
            images=self.images[keep],
            labels=new_labels[keep],
            classes=list(names),
            mean=self.mean,
            std=self.std,
            flip=self.flip,
        )
