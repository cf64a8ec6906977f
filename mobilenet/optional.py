"""Optional packages (onnx, onnxruntime, onnxscript; keras for tests) asked about in one place,
importable from every layer without importing the packages that use them."""

from __future__ import annotations

import importlib.util

EXTRAS = {"onnx": "export", "onnxruntime": "export", "onnxscript": "export", "openvino": "openvino"}


class MissingPackage(ImportError):
    """An optional package is not installed; the message says how to get it."""


def available(package: str) -> bool:
    """Whether `package` is installed (found, not imported: asking costs nothing)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def require(*packages: str, purpose: str = "this") -> None:
    """Raise one MissingPackage line naming every package of `packages` that is not installed."""
    missing = [name for name in packages if not available(name)]
    if missing:
        extras = ",".join(dict.fromkeys(EXTRAS.get(name, name) for name in missing))
        raise MissingPackage(f"{purpose} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                             f"not installed: pip install 'mobilenet[{extras}]' (or `make install`)")


__all__ = ["EXTRAS", "MissingPackage", "available", "require"]
