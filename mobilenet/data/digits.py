"""The embedded default dataset: UCI optical handwritten digits, shipped inside the package.

Source: "Optical Recognition of Handwritten Digits" (E. Alpaydin and C. Kaynak, UCI Machine
Learning Repository, 1998, https://doi.org/10.24432/C50P49), in the copy shipped with
scikit-learn: 1,797 grayscale images of 8x8 pixels with values 0..16, ten classes "0".."9".
Licence: CC BY 4.0. ``digits.npz`` next to this file holds the images with a fixed, class-
stratified split of 1,437 training and 360 test images; ``tools/make_digits.py`` is the one-off script
that made it (see there for how the split was chosen).

The digits let every command of the package run in seconds with no download. To look like the
other datasets they are rescaled to 0..255, upscaled bilinearly to the requested resolution
(32 by default, like CIFAR-10) and replicated to three channels.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from mobilenet.checks import check_resolution
from mobilenet.data.memory import InMemoryDataset

CLASSES = [str(digit) for digit in range(10)]
# Per-channel mean and std (0..1 scale) of the training split at 32x32 (a test recomputes them).
# The three channels are copies of one grey channel, so the three values are equal.
MEAN = (0.3055, 0.3055, 0.3055)
STD = (0.3237, 0.3237, 0.3237)


def load_digits(split: str, resolution: int = 32) -> InMemoryDataset:
    """The digits' ``"train"`` (1,437 images) or ``"test"`` (360 images) split as uint8 RGB."""
    if split not in ("train", "test"):
        raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
    check_resolution(resolution)
    with resources.files(__package__).joinpath("digits.npz").open("rb") as f, np.load(f) as arrays:
        images = torch.from_numpy(arrays[f"{split}_images"].astype(np.float32))
        labels = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
    return InMemoryDataset(
        images=to_rgb_uint8(images, resolution), labels=labels, classes=list(CLASSES), mean=MEAN, std=STD,
        flip=False,  # a mirrored digit is not a digit
    )


def to_rgb_uint8(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Map ``N x 8 x 8`` values 0..16 to uint8 ``N x 3 x R x R`` on 0..255 (one rounding, at the end)."""
    scaled = images.unsqueeze(1) * (255 / 16)
    resized = F.interpolate(scaled, size=(resolution, resolution), mode="bilinear", align_corners=False,
                            antialias=resolution < images.shape[-1])  # only shrinking needs it
    grey = resized.round_().clamp_(0, 255).to(torch.uint8)
    return grey.expand(-1, 3, -1, -1).contiguous()

