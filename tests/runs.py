"""What several test files train: one tiny configuration, so a change to it is made once."""

from mobilenet.train import TrainConfig


def tiny(out, **overrides) -> TrainConfig:
    """A run of a few seconds: a thin V1 on three digit classes at 16x16."""
    config = dict(out=str(out), model="mobilenet_v1", width=0.25, small_input=True, data="digits",
                  classes=["0", "1", "2"], resolution=16, epochs=2, batch_size=32, lr=0.05, seed=3)
    config.update(overrides)
    return TrainConfig(**config)


class Worker:
    """A reference library's side of a real-library test (tests/keras_worker.py, tests/timm_worker.py),
    started in its own process as the test file is collected, so that its import and model building
    run in the time the tests before it leave idle: one thread, at the lowest priority (beside
    OpenMP threads that spin, a competing process slows them far more than it gains). `files()`
    waits for it and returns the folder it wrote; the process and folder go at exit, whether or not
    its tests ran (deselected with -k, say)."""

    def __init__(self, script: str, *args: str) -> None:
        import atexit
        import os
        import shutil
        import subprocess
        import sys
        import tempfile
        from pathlib import Path

        self.out = Path(tempfile.mkdtemp(prefix=f"mobilenet-{Path(script).stem}-"))
        worker = Path(__file__).with_name(script)
        self.proc = subprocess.Popen([sys.executable, str(worker), str(self.out), *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                     preexec_fn=lambda: os.nice(19))

        def stop() -> None:
            self.proc.kill()
            self.proc.communicate()
            shutil.rmtree(self.out, ignore_errors=True)

        atexit.register(stop)

    def files(self):
        stdout, stderr = self.proc.communicate(timeout=600)
        assert self.proc.returncode == 0, stderr[-3000:]
        return self.out
