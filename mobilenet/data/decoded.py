"""A folder of small images decoded once: every image as uint8 pixels in one flat buffer, kept in
memory when it fits, else in a memory-mapped file in the cache folder.

Decoding a PNG costs far more than the few pixels of a 28x28 image are worth, and a training run
decodes every image once per epoch; so a folder whose images are small is decoded once, before
the first epoch, and the transforms (`mobilenet.data.folder`) then run on the decoded pixels. The
file on disk is keyed by everything that could change what it holds: the folder, the split, the
channels, and every file's name, size and modification time; a changed folder gets a new key and
is read again. Large images (ImageNet) are not cached: they are read from their files as before.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

SMALL_SIDE = 96  # images this small (or smaller) on both sides are decoded once
MEMORY_LIMIT = 1 << 30  # bytes of pixels kept in memory; more goes to a memory-mapped file
SAMPLE = 32  # images decoded first to judge a folder's image size


class DecodedImages:
    """The pixels of images `0..N-1` (uint8 `H x W x C`), decoded once by `decode(index)`."""

    def __init__(self, buffer: np.ndarray, offsets: np.ndarray, shapes: np.ndarray) -> None:
        self.buffer, self.offsets, self.shapes = buffer, offsets, shapes

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> np.ndarray:
        start = int(self.offsets[index])
        height, width, channels = (int(v) for v in self.shapes[index])
        return self.buffer[start:start + height * width * channels].reshape(height, width, channels)

    @classmethod
    def build(cls, count: int, decode, path: Path | None = None, progress: bool = True) -> DecodedImages:
        """Decode all `count` images with `decode(index) -> uint8 H x W x C`, into memory
        (`path` None) or into the file `path` (written atomically, its index beside it)."""
        from mobilenet.files import atomic_output

        shapes = np.zeros((count, 3), dtype=np.int64)
        arrays = []
        with tqdm(total=count, desc="decoding the images once", unit="img", disable=None if progress else True,
                  leave=False, file=sys.stderr) as bar:
            for i in range(count):
                array = decode(i)
                shapes[i] = array.shape
                arrays.append(array.reshape(-1))
                bar.update()
        offsets = np.zeros(count, dtype=np.int64)
        offsets[1:] = np.cumsum(shapes.prod(axis=1))[:-1]
        if path is None:
            return cls(np.concatenate(arrays) if arrays else np.zeros(0, np.uint8), offsets, shapes)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            for array in arrays:
                f.write(array.tobytes())
        with atomic_output(path.with_suffix(".index.npz")) as tmp, open(tmp, "wb") as f:
            np.savez(f, offsets=offsets, shapes=shapes)
        return cls.open(path)

    @classmethod
    def open(cls, path: Path) -> DecodedImages | None:
        """A decoded cache written before, memory-mapped; None if it is not there or incomplete."""
        index = path.with_suffix(".index.npz")
        try:
            with np.load(index) as stored:
                offsets, shapes = stored["offsets"], stored["shapes"]
            buffer = np.memmap(path, dtype=np.uint8, mode="r")
        except (OSError, ValueError, KeyError):
            return None
        if len(buffer) != int(shapes.prod(axis=1).sum()):
            return None
        return cls(buffer, offsets, shapes)


def folder_key(root: Path, split: str, channels: int, paths: list[bytes]) -> str:
    """What identifies a folder's contents: its place, split, channels and every file's name,
    size and modification time."""
    digest = hashlib.sha256(f"{root.resolve()}\0{split}\0{channels}\0".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(path + f"\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:32]


__all__ = ["DecodedImages", "MEMORY_LIMIT", "SMALL_SIDE", "folder_key"]
