"""Optional packages (onnx, onnxruntime, onnxscript, torchao; keras for tests) asked about in one place,
importable from every layer without importing the packages that use them."""

from __future__ import annotations

import importlib.util

EXTRAS = {"onnx": "export", "onnxruntime": "export", "onnxscript": "export", "openvino": "openvino",
          "executorch": "executorch", "litert_torch": "tflite", "ai_edge_litert": "tflite", "coremltools": "coreml",
          "torchao": "qat"}
# The phone converters are large (1-2 GB each) and stay out of `make install`; `make test-ondevice`
# builds one virtual environment per extra, .venv-<extra>.
PHONE_EXTRAS = ("executorch", "tflite", "coreml")


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
        extras = list(dict.fromkeys(EXTRAS.get(name, name) for name in missing))
        phone = [extra for extra in extras if extra in PHONE_EXTRAS]
        hint = (f"(with the torch you have, e.g. torch==2.13.0; `make test-ondevice` builds .venv-{phone[0]})" if phone
                else "(or `make install`)")
        raise MissingPackage(f"{purpose} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                             f"not installed: pip install 'mobilenet[{','.join(extras)}]' {hint}")


__all__ = ["EXTRAS", "PHONE_EXTRAS", "MissingPackage", "available", "require"]
