"""What several test files train: one tiny configuration, so a change to it is made once."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mobilenet.train import TrainConfig

# torchvision 0.28, for the reference-library workers: where `make install` puts it (tests/reference.py)
TORCHVISION = Path(sys.prefix) / "torchvision-0.28"


def tiny(out, **overrides) -> TrainConfig:
    """A run of a few seconds: a thin V1 on three digit classes at 16x16."""
    config = dict(out=str(out), model="mobilenet_v1", width=0.25, small_input=True, data="digits",
                  classes=["0", "1", "2"], resolution=16, epochs=2, batch_size=32, lr=0.05, seed=3)
    config.update(overrides)
    return TrainConfig(**config)


class Worker:
    """A reference library's side of a real-library test (tests/keras_worker.py, timm_worker.py, torchvision_worker.py),
    started in its own process as the test file is collected, so that its import and model building
    run in the time the tests before it leave idle: one thread, at the lowest priority (beside
    OpenMP threads that spin, a competing process slows them far more than it gains). `files()`
    waits for it and returns the folder it wrote; the process and folder go at exit, whether or not
    its tests ran (deselected with -k, say). Under pytest-xdist every worker collects every file, so
    there it starts when its tests first ask for it, in the one worker that runs them (the test files
    put them in one xdist_group), at normal priority since that test waits for it."""

    def __init__(self, script: str, *args: str) -> None:
        self.out = Path(tempfile.mkdtemp(prefix=f"mobilenet-{Path(script).stem}-"))
        worker = Path(__file__).with_name(script)
        self.command = [sys.executable, str(worker), str(self.out), *args]
        self.proc = None

        def stop() -> None:
            if self.proc is not None:
                self.proc.kill()
                self.proc.communicate()
            shutil.rmtree(self.out, ignore_errors=True)

        atexit.register(stop)
        if "PYTEST_XDIST_WORKER" not in os.environ:
            self.start(niceness=19)

    def start(self, niceness: int = 0) -> None:
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=lambda: os.nice(niceness))

    def files(self):
        if self.proc is None:  # started on demand, with a test waiting for it: at normal priority
            self.start()
        stdout, stderr = self.proc.communicate(timeout=600)
        assert self.proc.returncode == 0, stderr[-3000:]
        return self.out
