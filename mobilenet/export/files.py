"""What every exporter shares: optional packages named in one place, and atomic output files."""

from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mobilenet import files

INSTALL_HINT = "pip install 'mobilenet[export]' (or `make install`)"


class MissingPackage(ImportError):
    """An optional package (onnx, onnxruntime, onnxscript) is not installed; the message says how to get it."""


def require(*packages: str, purpose: str = "this") -> None:
    """Raise one MissingPackage line naming every package of `packages` that cannot be imported."""
    missing = [name for name in packages if not available(name)]
    if missing:
        raise MissingPackage(f"{purpose} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                             f"not installed: {INSTALL_HINT}")


def available(package: str) -> bool:
    """Whether `package` can be imported."""
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True


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
    except PermissionError:
        raise PermissionError(f"output folder {path.parent} is not writable") from None
    os.close(fd)
    os.unlink(probe)
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """`mobilenet.files.atomic_output`, after the export's own checks of the output path."""
    with files.atomic_output(check_output_path(path)) as tmp:
        yield tmp
