"""What every exporter shares: optional packages named in one place, and atomic output files."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from pathlib import Path

from mobilenet import files
from mobilenet.files import check_output_path

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


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """`mobilenet.files.atomic_output`, after the export's own checks of the output path."""
    with files.atomic_output(check_output_path(path)) as tmp:
        yield tmp
