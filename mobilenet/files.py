"""Writing files so that nothing half-written is ever left: the one place for atomic output and
verified downloads, used by checkpoints, run directories, exports, datasets and weights."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm import tqdm

CHUNK = 1 << 20
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)  # permissions, or a read-only file system
TEMPORARY = ".tmp-"  # in the names of atomic_output's temporary files: `.<stem>.tmp-<random><suffix>`


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file beside `path` to write (and check); it replaces `path` only if the
    block succeeds and is deleted otherwise (an error, Ctrl-C), so `path` holds either its old
    content or the whole new one. The temporary name keeps `path`'s suffix, which some writers
    insist on (torch.export wants ".pt2")."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"output {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}{TEMPORARY}", suffix=path.suffix, dir=path.parent)
    except OSError as error:
        if error.errno in NOT_WRITABLE:
            raise PermissionError(f"folder {path.parent} is not writable") from None
        raise
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp's file is private (0600): give it a new file's usual mode
        os.replace(tmp, path)
    except Exception as error:
        if _disk_full(error):
            raise OSError(errno.ENOSPC, f"no space left on the device to write {path}; "
                                        f"{path.name} keeps its previous content") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _disk_full(error: BaseException) -> bool:
    """ENOSPC, whether raised by Python or reported in the message of a library's own error
    (safetensors raises SafetensorError("... No space left on device (os error 28)"))."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return "No space left on device" in str(error) or "os error 28" in str(error)


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that a killed process left in `folder` (from `atomic_output`);
    returns them. Call it only while no other process can be writing there (a run holds its lock)."""
    removed = []
    for entry in Path(folder).iterdir():
        if entry.name.startswith(".") and TEMPORARY in entry.name and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same resolved path, or the same inode (a hard link,
    a bind mount) when both exist."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwrite(output: str | os.PathLike, inputs: dict[str, str | os.PathLike | None]) -> None:
    """Raise ValueError if `output` is one of `inputs` ({what: path}): checked before any work, so
    a command never replaces the file it reads with the file it writes."""
    for what, path in inputs.items():
        if path is not None and str(path) and same_file(output, path):
            raise ValueError(f"the output {output} is the {what} it is made from; write it to another file")


def check_output_path(path: str | os.PathLike) -> Path:
    """`path` as a Path, after checking that its folder exists and is writable, and that `path` is not
    a folder: the cheap checks, made before any slow work."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"output {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {path.parent} does not exist")
    try:  # the one sure test of writability (permissions, read-only mounts, root) is to write
        fd, probe = tempfile.mkstemp(prefix=f".{path.stem}.probe-", dir=path.parent)
    except OSError as error:
        if error.errno in NOT_WRITABLE:
            raise PermissionError(f"output folder {path.parent} is not writable") from None
        raise
    os.close(fd)
    os.unlink(probe)
    return path


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace a text file atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def read_cache(path: str | os.PathLike | None) -> dict:
    """The JSON object of a decision cache (e.g. `<data root>/runtime-choices.json`); empty if the
    file is missing, unreadable or not an object: a lost cache only costs a measurement."""
    try:
        data = json.loads(Path(path).read_text()) if path else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_cache(path: str | os.PathLike, key: str, value) -> None:
    """Set `key` in the decision cache at `path` (atomically); a cache that cannot be written is let go."""
    data = read_cache(path)
    data[key] = value
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(data, indent=1) + "\n")
    except OSError:
        pass


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, destination: str | os.PathLike, *, algorithm: str, verify: Callable[[Path, str], None],
             progress: bool = True, timeout: float = 60.0) -> str:
    """Fetch `url` into `destination` with a progress bar (bytes, rate, ETA); returns the file's
    digest under `algorithm`. `verify(temporary_path, digest)` raises if the bytes are wrong; only
    then is `destination` replaced, so a broken or interrupted download leaves nothing behind.
    Network failures raise OSError naming the URL; a short read raises ValueError."""
    destination = Path(destination)
    with atomic_output(destination) as tmp:
        digest, written = hashlib.new(algorithm), 0
        request = urllib.request.Request(url, headers={"User-Agent": "mobilenet"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
                size = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=destination.name,
                          disable=not progress, file=sys.stderr) as bar:
                    for chunk in iter(lambda: response.read(CHUNK), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        written += len(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            raise OSError(f"download of {url} failed: {error}") from error
        if size is not None and written != size:
            raise ValueError(f"download of {url} truncated: {written} of {size} bytes")
        verify(tmp, digest.hexdigest())
    return digest.hexdigest()
