"""The kernels' C library: compiled for this CPU on first use (gcc -march=native, or the CPU class
$MOBILENET_FUSED_MARCH names), cached in the cache folder with its checksum, loaded with its ctypes
signatures; or, where it cannot be built, the one-line reason the modules fall back to PyTorch."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from mobilenet import cache
from mobilenet.files import file_digest, write_text
from mobilenet.machine import cpu_flags, cpu_name

SOURCES = [Path(__file__).with_name(name) for name in ("bn_act.c", "depthwise.c")]
HEADERS = [Path(__file__).with_name("common.h")]
FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC"]  # and -march (`target()`)
# The CPU the kernels are compiled for: this one by default. Another gcc -march value builds the code
# path of that CPU class, so tests can check it on any machine that runs it: `x86-64-v3` (AVX2 and FMA,
# no AVX-512), `x86-64` (the portable vector code, no AVX at all).
TARGET_VARIABLE = "MOBILENET_FUSED_MARCH"
MAX_TAPS = 64  # depthwise.c's largest kernel (8x8), given to the compiler (-DMAX_TAPS)
SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}  # activation dtypes the kernel takes

_library: ctypes.CDLL | None = None
_why_not: str | None = None  # why the kernel is unavailable, once we know


def kernel_folder() -> Path:
    return cache.folder() / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def target() -> str:
    """gcc's -march for the kernels: $MOBILENET_FUSED_MARCH, else `native` (this CPU)."""
    return os.environ.get(TARGET_VARIABLE) or "native"


def _flags() -> list[str]:
    return [*FLAGS, f"-march={target()}", f"-DMAX_TAPS={MAX_TAPS}"]


def _library_path(compiler: str) -> Path:
    """The compiled kernel's path, keyed by everything it depends on: the source, the compiler and
    its flags, and this CPU (-march=native)."""
    texts = [path.read_text() for path in SOURCES + HEADERS]
    key = "\n".join([*texts, compiler, " ".join(_flags()), cpu_name(), " ".join(cpu_flags())])
    return kernel_folder() / f"kernels-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def _checksum_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _intact(library: Path) -> bool:
    """Whether the cached library is the one built here: its SHA-256 is the one recorded beside it
    when it was built. Anything else (truncated, replaced, no record) is never loaded: a truncated
    library crashes the process with SIGBUS when mapped, and another one runs its own code."""
    try:
        return _checksum_path(library).read_text().strip() == file_digest(library, "sha256")
    except OSError:
        return False


@contextlib.contextmanager
def _building(folder: Path):
    """Held while one process builds: the ranks of a torchrun job (or the workers of a test run) that
    start on a new machine together compile once, the others waiting for that library, not each
    compiling their own."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".build-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build() -> Path:
    """Compile the kernel for this CPU (if not already cached and intact) and return the library's
    path. Raises RuntimeError with the compiler's own message when it cannot be built."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (cc, gcc or $CC)")
    path = _library_path(compiler)
    if path.exists() and _intact(path):
        return path
    with _building(path.parent):
        if path.exists():  # built by the process that held the lock before, or found broken
            if _intact(path):
                return path
            print(f"note: the compiled kernels {path} do not match the checksum recorded when they were built; "
                  "building them again", file=sys.stderr)
        print(f"compiling the training kernels for this CPU (once; kept in {path.parent})", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as folder:
            built = Path(folder) / path.name
            result = subprocess.run([compiler, *_flags(), "-o", str(built), *map(str, SOURCES)], capture_output=True,
                                    text=True)
            if result.returncode != 0:
                message = (result.stderr.strip().splitlines() or ["failed"])[-1]
                raise RuntimeError(f"{compiler} could not build {', '.join(p.name for p in SOURCES)}: {message}")
            digest = file_digest(built, "sha256")
            os.replace(built, path)  # atomic: a process that does not take the lock sees no library or a whole one
            write_text(_checksum_path(path), digest + "\n")  # the record that lets it be loaded
    return path


def load() -> ctypes.CDLL | None:
    """The kernel library, built on first use; None (and a one-line note on stderr) if it cannot be."""
    global _library, _why_not
    if _library is not None or _why_not is not None:
        return _library
    if os.environ.get("MOBILENET_FUSED", "1") == "0":
        _why_not = "turned off by MOBILENET_FUSED=0"
        return None
    try:
        library = opened(build())
    except (RuntimeError, OSError) as error:
        _why_not = str(error).splitlines()[0]
        print(f"note: training kernels unavailable ({_why_not}); using PyTorch's BatchNorm and convolutions",
              file=sys.stderr)
        return None
    _library = library
    return library


def opened(path: str | os.PathLike) -> ctypes.CDLL:
    """The kernel library at `path`, loaded (after torch: it shares torch's OpenMP runtime,
    libgomp.so.1), its functions' argument types declared."""
    library = ctypes.CDLL(str(path))
    pointer, size, number, flag = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    for suffix in SUFFIX.values():
        getattr(library, f"bn_act_forward_{suffix}").argtypes = [
            pointer, pointer, size, size, pointer, pointer, pointer, pointer, flag, number, number, number, number,
            pointer, pointer]
        getattr(library, f"bn_act_backward_{suffix}").argtypes = [
            pointer, pointer, pointer, size, size, pointer, pointer, pointer, pointer, flag, number, number,
            pointer, pointer]
        getattr(library, f"dw_backward_input_{suffix}").argtypes = [pointer] * 3 + [size] * 12
        for pass_ in ("forward", "backward_weight"):  # and the BatchNorm applied to x as it is read (or none)
            getattr(library, f"dw_{pass_}_{suffix}").argtypes = [pointer] * 3 + [size] * 12 + [pointer] * 2 + [number] * 2
    library.bn_scale_shift.argtypes = [size] + [pointer] * 6
    return library


def available() -> bool:
    """Whether the kernels run on this machine (building them if needed)."""
    return load() is not None


def unavailable_reason() -> str | None:
    load()
    return _why_not


def version() -> str:
    """What the kernels' speed depends on besides the CPU: their compiled library's name (a hash of the
    sources, compiler and flags), or why they are unavailable. Part of the speed probes' cache keys."""
    compiler = _compiler()
    return _library_path(compiler).stem if available() and compiler else f"unavailable: {_why_not}"
