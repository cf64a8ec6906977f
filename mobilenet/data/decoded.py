"""A folder of small images decoded once: every image as uint8 pixels in one flat buffer, kept in
memory when it fits, else in a memory-mapped file in the cache folder.

Decoding a PNG costs far more than the few pixels of a 28x28 image are worth, and a training run
decodes every image once per epoch; so a folder whose images are small is decoded once, before
the first epoch, and the transforms (`mobilenet.data.folder`) then run on the decoded pixels. The
file on disk is keyed by everything that could change what it holds: the folder, the split, the
channels, and every file's name, inode, size, modification time and status-change time (which no
archive can set: a folder re-extracted with the same names, sizes and times still gets a new key),
and its index records a SHA-256 of the pixels, checked when it is opened. A cache that is
incomplete, malformed or whose pixels do not match is decoded again, with one line saying so.
Large images (ImageNet) are not cached: they are read from their files as before; a folder whose
first images are small but that holds a large one is read from its files too.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mobilenet.files import CHUNK, atomic_output

SMALL_SIDE = 96  # images this small (or smaller) on both sides are decoded once
MEMORY_LIMIT = 1 << 30  # bytes of pixels kept in memory; more goes to a memory-mapped file
SAMPLE = 32  # images decoded first, spread over the folder, to judge its image size
SAY_FROM = 5000  # images: decoding this many takes seconds, said even without a progress bar
VERSION = 2  # of the cache's layout and key; older caches are decoded again


class NotSmall(Exception):
    """An image larger than `SMALL_SIDE` met while decoding a folder once: it is read from its files."""


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
    def build(cls, count: int, decode: Callable[[int], np.ndarray], path: Path | None = None,
              progress: bool = True) -> DecodedImages:
        """Decode all `count` images with `decode(index) -> uint8 H x W x C`, into memory
        (`path` None) or into the file `path` (written atomically, its index and checksum beside it).
        Raises `NotSmall` at the first image larger than `SMALL_SIDE`, before it costs more memory."""
        shapes = np.zeros((count, 3), dtype=np.int64)
        arrays = []
        with tqdm(total=count, desc="decoding the images once", unit="img", disable=None if progress else True,
                  leave=False, file=sys.stderr) as bar:
            for i in range(count):
                array = decode(i)
                if max(array.shape[:2]) > SMALL_SIDE:
                    raise NotSmall(f"image {i} is {array.shape[1]} x {array.shape[0]} pixels")
                shapes[i] = array.shape
                arrays.append(array.reshape(-1))
                bar.update()
        offsets = np.zeros(count, dtype=np.int64)
        offsets[1:] = np.cumsum(shapes.prod(axis=1))[:-1]
        if path is None:
            return cls(np.concatenate(arrays) if arrays else np.zeros(0, np.uint8), offsets, shapes)
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            for array in arrays:
                f.write(array.tobytes())
                digest.update(array.data)
        with atomic_output(_index(path)) as tmp, open(tmp, "wb") as f:
            np.savez(f, offsets=offsets, shapes=shapes, sha256=np.array(digest.hexdigest()))
        return cls(np.memmap(path, dtype=np.uint8, mode="r"), offsets, shapes)

    @classmethod
    def open(cls, path: Path, count: int, say: Callable[[str], None] | None = None) -> DecodedImages | None:
        """The decoded cache of `count` images written before, memory-mapped, if it is whole and its
        pixels match the checksum in its index; None if it is not there, and (after a line to `say`)
        if it is anything else: it is then decoded again."""
        index = _index(path)
        if not path.exists() and not index.exists():
            return None
        try:
            with np.load(index) as stored:
                offsets, shapes, expected = stored["offsets"], stored["shapes"], str(stored["sha256"])
            if shapes.shape != (count, 3) or offsets.shape != (count,) or (shapes < 0).any():
                raise ValueError(f"its index lists {len(shapes)} images, the folder has {count}")
            sizes = shapes.prod(axis=1)
            if count and (offsets[0] != 0 or (offsets[1:] != np.cumsum(sizes)[:-1]).any()):
                raise ValueError("its index's offsets do not follow its shapes")
            buffer = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
            if len(buffer) != int(sizes.sum()):
                raise ValueError(f"it holds {len(buffer)} bytes of pixels, its index {int(sizes.sum())}")
            digest = hashlib.sha256()
            for start in range(0, len(buffer), CHUNK):
                digest.update(buffer[start:start + CHUNK])
            if digest.hexdigest() != expected:
                raise ValueError("its pixels do not match their checksum")
        except Exception as error:  # noqa: BLE001 - a cache is ours to rebuild, whatever is wrong with it
            if say:
                why = " ".join(str(error).split())[:160] or type(error).__name__
                say(f"note: the decoded-image cache {path} is unusable ({why}); decoding the images again")
            return None
        return cls(buffer, offsets, shapes)


def _index(path: Path) -> Path:
    return path.with_suffix(".index.npz")


def folder_key(root: Path, split: str, channels: int, paths: list[bytes]) -> str:
    """What identifies a folder's contents: its place, split, channels and every file's name, inode,
    size, modification and status-change times (see the module's docstring)."""
    digest = hashlib.sha256(f"{VERSION}\0{root.resolve()}\0{split}\0{channels}\0".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(path + f"\0{stat.st_dev}\0{stat.st_ino}\0{stat.st_size}\0{stat.st_mtime_ns}\0"
                             f"{stat.st_ctime_ns}\0".encode())
    return digest.hexdigest()[:32]


__all__ = ["DecodedImages", "MEMORY_LIMIT", "NotSmall", "SMALL_SIDE", "folder_key"]
