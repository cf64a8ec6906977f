"""Image folders in the ImageNet layout, decoded with Pillow, and their train and eval transforms.

Layout: ``ROOT/train/<class>/...`` and ``ROOT/val/<class>/...`` (``test`` is accepted as another
name for ``val``). Class names are the sorted sub-folder names and must be the same in both
splits, so that a label means the same class in training and evaluation. Images are found
recursively by extension; hidden files and other files (a README, ``.DS_Store``) are ignored.

Every image is converted to 8-bit RGB (see ``decode_image``), or to its grey for a 1-channel split,
and transformed to a uint8 ``C x R x R`` tensor; normalisation happens per batch in the loader. The transforms are the
standard ImageNet ones (Inception-style, as in the MobileNet papers):

* training: a random crop covering 8% to 100% of the image area with aspect ratio in [3/4, 4/3]
  (torchvision's ``RandomResizedCrop`` semantics, 10 tries then a centre-crop fallback), resized
  to ``R x R``, then a horizontal flip with probability 1/2;
* evaluation: the short side resized to ``round(R / 0.875)`` and a centre ``R x R`` crop.

``R`` is the resolution, so this is where the MobileNet resolution multiplier acts. The random
choices of one image are drawn from ``numpy.random.default_rng([seed, epoch, index])``: they depend
on nothing else (not the worker process, not the number of workers), so a resumed run sees the
same crops.
"""

from __future__ import annotations

import copy
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from mobilenet import cache
from mobilenet.checks import check_resolution, some
from mobilenet.files import require_regular
from mobilenet.data import decoded
from mobilenet.data.decoded import DecodedImages, NotSmall, folder_key
from mobilenet.data.memory import CHANNELS, class_positions, stats_to_channels

SPLITS = {"train": "train", "val": "val", "test": "val"}
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
# ImageNet statistics (0..1 scale), the usual normalisation for ImageNet-like folders.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EVAL_CROP_FRACTION = 0.875  # resize to R / 0.875, then centre-crop R: 256 -> 224 at R = 224
LARGE_RESOLUTION = 224  # the resolution of folders of large images (ImageNet's)
SMALL_INPUT_SIDE = 64  # images this small or smaller train the small-input variant by default
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N")
SIZE_SAMPLE = 64  # image headers read, spread over a split, to choose its defaults
STATS_SAMPLE = 512  # grey images decoded to compute a grey folder's own mean and std
TRAIN_SCALE = (0.08, 1.0)
TRAIN_RATIO = (3 / 4, 4 / 3)
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white


def decode_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file as 8-bit RGB, upright; errors name the file.

    Anything but a regular file (a named pipe, a device) is refused before it is opened, as
    reading one can block for ever. ``load()`` forces the whole file to be decoded now, so a
    truncated file fails here (Pillow's ``LOAD_TRUNCATED_IMAGES`` is left off) instead of yielding
    a partly grey image. The EXIF orientation is applied (``ImageOps.exif_transpose``), as a photo
    viewer shows the picture: phones store a portrait photo sideways with Orientation 6. Conversions:
    grayscale (L, 1) and CMYK by Pillow; palette (P) through RGBA when it has transparency;
    images with alpha (RGBA, LA, PA) composited onto white, since the colour under a fully
    transparent pixel is arbitrary; 16- and 32-bit integer grayscale (I;16*, I) scaled from
    0..65535 to 0..255 (Pillow's own conversion would clip everything above 255 to white).
    """
    require_regular(path, "image")
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot decode image {path}: {error}") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded Pillow image of any common mode to 8-bit RGB (see ``decode_image``)."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):  # I;16, I;16B, I;16L, I: integer grayscale, 16-bit range
        values = np.asarray(image).astype(np.float64)
        grey = np.clip(np.round(values * (255 / 65535)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB or grey ("L") Pillow image as a uint8 ``C x H x W`` tensor (C = 3 or 1)."""
    array = np.array(image, dtype=np.uint8)
    return torch.from_numpy(array[..., None] if array.ndim == 2 else array).permute(2, 0, 1).contiguous()


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """An RGB image as `channels` channels: itself, or its luma (Pillow's "L": ITU-R 601, `memory.LUMA`)."""
    return image if channels == 3 else image.convert("L")


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random crop ``(left, top, right, bottom)`` with torchvision ``RandomResizedCrop`` semantics.

    Try 10 times to draw an area fraction in ``TRAIN_SCALE`` and a log-uniform aspect ratio in
    ``TRAIN_RATIO`` that fit in the image; otherwise fall back to the largest centred crop whose
    aspect ratio is within ``TRAIN_RATIO``.
    """
    area = width * height
    log_ratio = (math.log(TRAIN_RATIO[0]), math.log(TRAIN_RATIO[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*TRAIN_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < TRAIN_RATIO[0]:
        w, h = width, round(width / TRAIN_RATIO[0])
    elif ratio > TRAIN_RATIO[1]:
        w, h = round(height * TRAIN_RATIO[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def train_transform(image: Image.Image, resolution: int, rng: np.random.Generator) -> torch.Tensor:
    """Random resized crop to ``resolution`` squared, then a horizontal flip with probability 1/2."""
    box = random_resized_crop_box(image.width, image.height, rng)
    crop = image.resize((resolution, resolution), Image.Resampling.BILINEAR, box=box)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_tensor(crop)


def eval_transform(image: Image.Image, resolution: int,
                   crop_fraction: float = EVAL_CROP_FRACTION) -> torch.Tensor:
    """Resize the short side to ``round(resolution / crop_fraction)``, then take the centre square crop.

    ``crop_fraction`` is 0.875 for ImageNet-style evaluation; 1.0 keeps the whole short side, which
    suits files shown to a model trained on whole images (digits, CIFAR-10).
    """
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}")
    short = round(resolution / crop_fraction)
    scale = short / min(image.width, image.height)
    # The short side is set exactly; the long side keeps the aspect ratio (truncated, like torchvision).
    if image.width <= image.height:
        size = (short, int(image.height * scale))
    else:
        size = (int(image.width * scale), short)
    if size[0] * size[1] > Image.MAX_IMAGE_PIXELS:  # a strip: few pixels, but huge once its short side is scaled up
        raise ValueError(f"an image of {image.width} x {image.height} pixels would be resized to {size[0]} x {size[1]}, "
                         f"more than the {Image.MAX_IMAGE_PIXELS:,} pixels an image may have (PIL.Image.MAX_IMAGE_PIXELS)")
    resized = image.resize(size, Image.Resampling.BILINEAR)
    left = int(round((resized.width - resolution) / 2))
    top = int(round((resized.height - resolution) / 2))
    return to_tensor(resized.crop((left, top, left + resolution, top + resolution)))


def find_classes(split_dir: Path) -> list[str]:
    """Sorted names of the class sub-folders of ``split_dir``; ValueError if there are none."""
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"no folder {split_dir}; an image folder needs train/<class>/ and val/<class>/ sub-folders"
        )
    with os.scandir(split_dir) as entries:
        classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"{split_dir} has no class sub-folders; expected {split_dir}/<class>/<image files>")
    return classes


def spread(count: int, total: int) -> list[int]:
    """`count` indices spread evenly over range(`total`) (all of them if there are fewer)."""
    return sorted({int(i) for i in np.linspace(0, total - 1, min(count, total)).round()}) if total else []


def folder_defaults(paths: Sequence[bytes]) -> tuple[int, int, str]:
    """What an image folder trains at when not told: (resolution, channels, why). The resolution is
    the images' own median short side where they are small (`decoded.SMALL_SIDE` or less), else
    `LARGE_RESOLUTION`; one channel where every image sampled is grey, else three. Read from the
    headers of up to `SIZE_SAMPLE` images spread over the folder (nothing is decoded)."""
    sides, grey = [], True
    for i in spread(SIZE_SAMPLE, len(paths)):
        path = os.fsdecode(paths[i])
        require_regular(path, "image")
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
                grey = grey and image.mode in GREY_MODES
        except (OSError, SyntaxError, ValueError) as error:
            raise ValueError(f"cannot decode image {path}: {error}") from error
    side = int(np.median(sides)) if sides else LARGE_RESOLUTION
    small = side <= decoded.SMALL_SIDE
    resolution = side if small else LARGE_RESOLUTION
    channels = 1 if grey and sides else 3
    why = (f"images {side} pixels on their median short side (of {len(sides)} sampled): resolution "
           f"{resolution}{' (their own)' if small else ''}, {'grey: 1 channel' if channels == 1 else '3 channels'}")
    return resolution, channels, why


def _identity(path: str | os.PathLike) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def find_images(class_dir: Path, skipped: list[str] | None = None, seen: set | None = None) -> list[Path]:
    """Image files under ``class_dir`` (recursively, sorted); ValueError if there are none.

    Symbolic links are followed, but each real folder is walked once: a link to a folder already
    walked or in ``seen`` (a loop such as ``cat/loop -> ..``, a link to another class folder, a
    second way into the same images) is skipped and described in ``skipped``, so no image is
    counted twice, none is filed under two classes, and no walk is endless.
    """
    found, seen = [], set() if seen is None else seen
    seen.add(_identity(class_dir))
    for parent, dirs, files in os.walk(class_dir, followlinks=True):
        kept = []
        for name in sorted(d for d in dirs if not d.startswith(".")):
            identity = _identity(os.path.join(parent, name))  # os.walk lists no dangling link as a folder
            if identity in seen:
                if skipped is not None:
                    skipped.append(f"{os.path.join(parent, name)} (a link to a folder read once already)")
                continue
            seen.add(identity)
            kept.append(name)
        dirs[:] = kept
        found += [Path(parent, f) for f in sorted(files) if f.lower().endswith(EXTENSIONS) and f[0] != "."]
    if not found:
        raise ValueError(f"class folder {class_dir} has no images (looked for {', '.join(EXTENSIONS)})")
    return found


class ImageFolder(torch.utils.data.Dataset):
    """One split of an ImageNet-layout folder; items are ``(uint8 C x R x R image, label)``, eval-transformed.

    The training transform is applied by the training loader (``mobilenet.data.loader``) through
    ``load(index, train=True, rng=...)``; plain indexing gives the deterministic eval transform.
    """

    def __init__(self, root: str | os.PathLike, split: str, resolution: int | None = LARGE_RESOLUTION,
                 channels: int | None = 3) -> None:
        if split not in SPLITS:
            raise ValueError(f"image folder split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"no image folder at {self.root}")
        self.split = SPLITS[split]
        self.classes = find_classes(self.root / self.split)
        other = "val" if self.split == "train" else "train"
        other_classes = find_classes(self.root / other)
        if other_classes != self.classes:
            differ = sorted(set(self.classes) ^ set(other_classes))
            raise ValueError(
                f"train/ and val/ of {self.root} must have the same class folders; "
                f"differing: {', '.join(differ)}"
            )
        paths, labels, skipped = [], [], []
        split_dir = self.root / self.split
        seen = {_identity(split_dir), *(_identity(split_dir / name) for name in self.classes)}
        for label, name in enumerate(self.classes):
            found = find_images(split_dir / name, skipped, seen)
            paths += [os.fsencode(path) for path in found]
            labels += [label] * len(found)
        if skipped:
            print(f"note: {self.root / self.split}: skipped {len(skipped)} folder link{'s' * (len(skipped) > 1)}: "
                  f"{some(skipped, 3)}", file=sys.stderr)
        # One numpy bytes array rather than a list of Path objects: forked DataLoader workers read it
        # without touching reference counts, so they share it instead of each copying it
        # (the copy-on-read memory growth of pytorch/pytorch#13246, large at ImageNet's 1.28M files).
        self.paths = np.array(paths)
        self.labels = np.array(labels, dtype=np.int64)
        self.decoded: DecodedImages | None = None  # the pixels of small images, once `decode_once` ran
        self.chosen = None  # what was chosen from the images themselves, and why (None: all was given)
        if resolution is None or channels is None:
            native, grey, why = folder_defaults(self.paths)
            self.chosen = why
            resolution, channels = resolution or native, channels or grey
        self.resolution = check_resolution(resolution)
        if channels not in CHANNELS:
            raise ValueError(f"images have 1 (grayscale) or 3 (RGB) channels, not {channels}")
        self.channels = channels
        self.mean, self.std = stats_to_channels(MEAN, channels), stats_to_channels(STD, channels)
        if self.chosen and channels == 1:  # a grey folder: its own statistics, not ImageNet's luma
            self.mean, self.std = self.pixel_stats()
            self.chosen += f", its own mean {self.mean[0]:.4f} and std {self.std[0]:.4f}"
        self.crop_fraction = EVAL_CROP_FRACTION  # what eval_transform crops, and predict after training on it

    def __len__(self) -> int:
        return len(self.labels)

    def pixels(self, index: int) -> np.ndarray:
        """Image ``index`` decoded, in this split's channels, as uint8 ``H x W x C``."""
        array = np.asarray(to_mode(decode_image(os.fsdecode(self.paths[index])), self.channels), dtype=np.uint8)
        return array[..., None] if array.ndim == 2 else array

    def pixel_stats(self) -> tuple[tuple[float], tuple[float]]:
        """Mean and standard deviation (0..1 scale) of the pixels of up to `STATS_SAMPLE` images spread
        over this split, in its channels (one, where this is called)."""
        total = squares = count = 0.0
        for i in spread(STATS_SAMPLE, len(self)):
            values = self.pixels(i).astype(np.float64) / 255
            total, squares, count = total + values.sum(), squares + (values ** 2).sum(), count + values.size
        mean = total / count
        return (round(mean, 4),), (round(max(squares / count - mean ** 2, 1e-12) ** 0.5, 4),)

    def decode_once(self, progress: bool = True) -> None:
        """Decode every image now, once, if they are small (`decoded.SMALL_SIDE`): into memory when
        they fit (`decoded.MEMORY_LIMIT`), else into a memory-mapped file in the cache folder keyed
        by the files' names, sizes and times. Large images keep being read from their files."""
        if self.decoded is not None or not len(self):
            return
        sample = [self.pixels(i) for i in spread(decoded.SAMPLE, len(self))]
        if max(max(a.shape[:2]) for a in sample) > decoded.SMALL_SIDE:
            return
        if not progress and len(self) >= decoded.SAY_FROM:  # no bar: the fact, in one line
            print(f"decoding the {len(self)} images of {self.root / self.split} once", file=sys.stderr, flush=True)
        try:
            if max(a.size for a in sample) * len(self) <= decoded.MEMORY_LIMIT:
                self.decoded = DecodedImages.build(len(self), self.pixels, progress=progress)
                return
            key = folder_key(self.root, self.split, self.channels, list(self.paths))
            path = cache.folder() / "decoded" / f"{key}.u8"
            say = lambda line: print(line, file=sys.stderr)  # noqa: E731
            self.decoded = (DecodedImages.open(path, len(self), say)
                            or DecodedImages.build(len(self), self.pixels, path, progress))
        except NotSmall:  # a large image after small ones: all of them are read from their files
            self.decoded = None

    def load(self, index: int, *, train: bool = False,
             rng: np.random.Generator | None = None) -> tuple[torch.Tensor, int]:
        """Image ``index`` (from the decoded pixels, or its file) with the train transform (drawing
        from ``rng``) or the eval one."""
        if self.decoded is not None:
            pixels = self.decoded[index]
            image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        else:
            image = to_mode(decode_image(os.fsdecode(self.paths[index])), self.channels)
        label = int(self.labels[index])
        if train:
            if rng is None:
                raise ValueError("the training transform needs rng, a numpy Generator for its random draws")
            return train_transform(image, self.resolution, rng), label
        try:
            return eval_transform(image, self.resolution), label
        except ValueError as error:
            raise ValueError(f"image {os.fsdecode(self.paths[index])}: {error}") from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.load(index)

    def subset(self, indices: np.ndarray) -> ImageFolder:
        """The images at ``indices``, in that order (decoded on their own if they are decoded at all)."""
        subset = copy.copy(self)
        subset.paths, subset.labels, subset.decoded = self.paths[indices], self.labels[indices], None
        return subset

    def select_classes(self, names: Sequence[str]) -> ImageFolder:
        """A copy keeping only the classes ``names``, renumbered from 0 in the order given."""
        relabel = np.full(len(self.classes), -1, dtype=np.int64)
        relabel[class_positions(self.classes, names)] = np.arange(len(names))
        new_labels = relabel[self.labels]
        keep = new_labels >= 0
        subset = copy.copy(self)
        subset.classes, subset.paths, subset.labels = list(names), self.paths[keep], new_labels[keep]
        subset.decoded = None  # indexed like the whole folder: decode the subset on its own
        return subset
