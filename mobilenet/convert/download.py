"""Fetch published weight files from their official URLs, verified, written atomically.

What is verified is what the publisher makes knowable, and no more (see `catalog.py`):
- a full sha256, when given by the caller (`sha256=`) or known to the catalogue;
- otherwise the sha256 prefix that torchvision's and timm's `.pth` file names carry
  (`mobilenet_v2-b0353104.pth`: the digest starts with b0353104), the torch.hub convention;
- otherwise, for files published with no checksum (timm's Hugging Face safetensors, Keras's .h5),
  the byte count the server announced and the file's own structure: a safetensors header whose
  tensors exactly fill the file, an HDF5 file that opens with Keras weights in it. That catches
  truncation and corruption, not a substituted file: pass `sha256=` to pin one. The digest of
  every download is printed so that it can be pinned.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from mobilenet import files
from mobilenet.convert.catalog import FORMATS, find_weights, known_weights
from mobilenet.convert.keras_h5 import read_keras_h5

HUB_HASH = re.compile(r"-([a-f0-9]{8,64})\.")  # torch.hub: <name>-<sha256 prefix>.<ext>


def file_sha256(path: str | os.PathLike) -> str:
    return files.file_digest(path, "sha256")


def _check_safetensors(path: Path) -> None:
    """A safetensors file is an 8-byte header length, a JSON header, then exactly the bytes that
    header's tensors occupy."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("too short for a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise ValueError("safetensors header runs past the end of the file (truncated?)")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError("unreadable safetensors header") from None
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if 8 + length + max(ends, default=0) != size:
        raise ValueError(f"safetensors tensors end at byte {8 + length + max(ends, default=0)}, the file has {size} (truncated?)")


def _check_h5(path: Path) -> None:
    read_keras_h5(path)  # raises ValueError on anything that is not Keras weights


def _verify(path: Path, digest: str, sha256: str | None, prefix: str | None, label: str) -> None:
    if sha256:
        if digest != sha256:
            raise ValueError(f"checksum mismatch for {label}: sha256 {digest}, expected {sha256}")
    elif prefix:
        if not digest.startswith(prefix):
            raise ValueError(f"checksum mismatch for {label}: sha256 {digest[:16]}..., expected it to start with {prefix}")
    elif path.suffix == ".safetensors":
        try:
            _check_safetensors(path)
        except (ValueError, KeyError, TypeError, IndexError) as error:
            raise ValueError(f"{label} is not a complete safetensors file: {error}") from None
    elif path.suffix == ".h5":
        try:
            _check_h5(path)
        except (ValueError, OSError) as error:
            raise ValueError(f"{label} is not a Keras weights file: {error}") from None


def download(
    source_format: str, name: str, dest_dir: str | os.PathLike, url: str | None = None, sha256: str | None = None,
    *, progress: bool = True, timeout: float = 60.0,
) -> Path:
    """Download the published weights `name` of `source_format` ('torchvision', 'timm' or 'keras')
    into `dest_dir`; returns the file's path.

    `name` is a catalogue name (`known_weights(source_format)`, e.g. 'mobilenet_v2.IMAGENET1K_V1'
    or its alias 'mobilenet_v2'; 'mobilenetv2_100.ra_in1k' or 'mobilenetv2_100'), saved under the
    name `convert` recognises (timm: `<model>.<tag>.safetensors`). `url` overrides where the file
    comes from (a mirror); with a name outside the catalogue it is required, and the file keeps the
    URL's name. `sha256` pins the full digest.

    Verification: the full sha256 when `sha256` is given; else the 8 hex digits of the sha256 that
    torchvision's (and timm's GitHub) file names carry; else, for timm's Hugging Face safetensors
    and Keras's .h5 (published without any checksum), the announced size and the file's structure
    only -- say `sha256=` to pin them. A file already in `dest_dir` that passes is reused. Bytes go
    to a temporary file in `dest_dir`, renamed into place only once verified; on a mismatch, an
    error or Ctrl-C it is deleted, so no half-written file is ever left. Checksum failures raise
    ValueError, network failures OSError.
    """
    if source_format not in FORMATS:
        raise ValueError(f"source format must be one of {', '.join(FORMATS)}, got {source_format!r}")
    entry = find_weights(source_format, name)
    if entry is None and url is None:
        raise ValueError(f"unknown {source_format} weights {name!r}; known: {', '.join(known_weights(source_format))}")
    url = url or entry.url
    filename = entry.filename if entry else PurePosixPath(urlparse(url).path).name
    if not filename or filename in (".", ".."):
        raise ValueError(f"cannot name a file after {url}")
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    else:
        sha256 = entry.sha256 if entry else None
    prefix = None
    if not sha256:
        prefix = entry.sha256_prefix if entry else None
        if prefix is None and source_format != "keras" and (match := HUB_HASH.search(filename)):
            prefix = match.group(1)

    dest_dir = Path(dest_dir).expanduser()
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / filename
    if dest.is_file():
        try:
            _verify(dest, file_sha256(dest), sha256, prefix, str(dest))
            return dest
        except ValueError:
            pass  # a stale or damaged copy: fetch again, and replace it only once the new one verifies

    digest = files.download(url, dest, algorithm="sha256", progress=progress, timeout=timeout,
                            verify=lambda tmp, digest: _verify(tmp, digest, sha256, prefix, url))
    if progress:
        print(f"{dest}: sha256 {digest}", file=sys.stderr)
    return dest
