"""A run folder: where a run's files live, one writer at a time, and one consistent epoch on disk.

A run is identified by the folder it is in, never by a path written inside it, so a copied or
moved run resumes where it is. The folder holds:

    .lock               held (flock) by the process writing the run; it holds that process's pid.
                        Its presence also marks the folder as a run's, started by this toolkit.
    config.json         the resolved TrainConfig
    state.safetensors   the commit point of an epoch: weights, optimizer, averaged weights,
                        generators, and every epoch's metrics
    last.safetensors, metrics.jsonl, curves.png
                        views of the state, written after it and written again from it on resume
    best.safetensors    the best epoch so far, written before the state (a resumed run re-trains
                        that epoch exactly, so it would write the same file again)

A kill at any instant therefore leaves either a run that resumes at the epoch of its state file,
or, before the first state file, a folder that a fresh start may take over again.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from mobilenet.files import remove_temporaries

LOCK = ".lock"
CONFIG = "config.json"
STATE = "state.safetensors"
LAST = "last.safetensors"
BEST = "best.safetensors"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
OUTPUTS = (CONFIG, STATE, LAST, BEST, METRICS, CURVES)  # every file a run writes (and a fresh start replaces)


class TrainingError(ValueError):
    """A run that cannot go on (diverged, nothing to resume, folder in use): one line, exit status 2."""


class RunFolder:
    """The folder of one run, and the exclusive lock its writer holds (released by the kernel when
    the process ends, however it ends)."""

    def __init__(self, path: str | os.PathLike) -> None:
        if not str(path).strip():
            raise TrainingError("--out must name a run folder, got an empty path")
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise TrainingError(f"--out {self.path} is a file, not a folder")
        self._lock: int | None = None
        self.created = False

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def has_state(self) -> bool:
        return (self.path / STATE).is_file()

    def check_fresh(self) -> bool:
        """Check that a new run may start here; returns whether the folder holds an earlier run of
        ours that was stopped before its first epoch was committed (so its files are replaced)."""
        if self.has_state:
            raise TrainingError(f"{self.path} already holds a run: continue it with --resume, or choose another --out")
        ours = (self.path / LOCK).is_file()
        found = [name for name in OUTPUTS if (self.path / name).exists()]
        if found and not ours:
            raise TrainingError(f"{self.path} holds {', '.join(found)} that no mobilenet run is writing: "
                                f"choose another --out (nothing was changed)")
        return ours and bool(found)

    def check_resumable(self) -> None:
        if not (self.path / CONFIG).is_file():
            raise TrainingError(f"nothing to resume in {self.path}: no {CONFIG} (start a run without --resume)")
        if not self.has_state:
            raise TrainingError(f"nothing to resume in {self.path}: no {STATE}, so no epoch was finished "
                                f"(start the run again without --resume)")

    def acquire(self) -> None:
        """Take the folder's lock (creating the folder), then remove what killed writers left."""
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise TrainingError(f"{self.path} is in use by another training process (pid {holder}): "
                                f"wait for it to end, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock = fd
        remove_temporaries(self.path)

    def clear(self) -> None:
        """Remove a run's files (not the lock): a fresh start over a run that never finished an epoch."""
        for name in OUTPUTS:
            (self.path / name).unlink(missing_ok=True)

    def release(self, *, failed: bool = False) -> None:
        """Let go of the lock. `failed`: the run stopped before writing anything, so a folder it
        created is removed again (the lock file was all it held)."""
        if self._lock is None:
            return
        if failed and self.created and [p.name for p in self.path.iterdir()] == [LOCK]:
            (self.path / LOCK).unlink()
            self.path.rmdir()
        os.close(self._lock)
        self._lock = None


__all__ = ["BEST", "CONFIG", "CURVES", "LAST", "LOCK", "METRICS", "OUTPUTS", "RunFolder", "STATE", "TrainingError"]
