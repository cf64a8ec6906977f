import subprocess
import sys

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def cli():
    """Run `python -m mobilenet ARGS...` as a user would; returns the CompletedProcess."""

    def run(*args: str, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mobilenet", *map(str, args)], capture_output=True,
                              text=True, cwd=cwd, timeout=timeout)

    return run
