import contextlib
import http.server
import io
import os
import subprocess
import sys
import threading
import traceback
import warnings
from functools import partial
from pathlib import Path

import pytest
import torch

# Two threads a test process, as on the 2-core machines the suite is timed on; under pytest-xdist
# (`make test` runs one worker per core) the cores are shared out instead, so that no two workers'
# OpenMP threads spin against each other, and the commands the tests start inherit the same share.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = 2 if WORKERS == 1 else max(1, min(2, (os.cpu_count() or 1) // WORKERS))
torch.set_num_threads(THREADS)
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)

# The training step's probes (mobilenet.train.amp) cost seconds to minutes per model and batch shape, and
# only tests/test_amp.py is about them: every other training takes the step with all of our kernels in
# fp32 (those the machine can build), the same on every CPU. Subprocesses inherit it.
os.environ.setdefault("MOBILENET_STEP", "fp32:bn_act,depthwise,pointwise,bn_depthwise")
# The fp32 matrix peak behind each epoch's share of the compute bound: measured once per test process
# and given to the commands it starts (each would time its own products, ~0.7 s on one thread, longer
# than the tiny runs it puts in proportion). Tests of the probe itself remove it.
if "MOBILENET_MATMUL_GFLOPS" not in os.environ:
    from mobilenet.machine import matmul_probe

    probe = matmul_probe()
    probe.time(2)
    os.environ["MOBILENET_MATMUL_GFLOPS"] = f"{probe.gflops:.6g}"
# Likewise `auto`'s runtime choice (mobilenet.export.choose builds and times every runtime installed:
# seconds per model and batch size): only the tests about it measure (they remove this); every other
# `eval`, `predict` and study runs PyTorch (the runtimes themselves: test_export.py, test_choose.py).
os.environ.setdefault("MOBILENET_RUNTIME", "pytorch")


@pytest.fixture(autouse=True, scope="session")
def data_root(tmp_path_factory):
    """The data root (downloads, decoded folders, the runtime choices of `auto`) is the tests' own,
    never the user's ~/.cache/mobilenet."""
    root = tmp_path_factory.mktemp("data-root")
    if WORKERS > 1:  # the compiled kernels, though, once for the whole run: pytest-xdist's workers share them
        shared = tmp_path_factory.getbasetemp().parent / "kernels"
        shared.mkdir(exist_ok=True)
        (root / "kernels").symlink_to(shared, target_is_directory=True)
    previous = os.environ.get("MOBILENET_DATA")
    os.environ["MOBILENET_DATA"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("MOBILENET_DATA", None)
    else:
        os.environ["MOBILENET_DATA"] = previous

# Python's own warning filters outside development mode: what a user of the command sees.
DEFAULT_FILTERS = (("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, None),
                   ("ignore", PendingDeprecationWarning, None), ("ignore", ImportWarning, None),
                   ("ignore", ResourceWarning, None))


def run_in_process(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """`mobilenet ARGS...` through `mobilenet.cli.main` in this process, as the command would run:
    its stdout and stderr captured, warnings printed to that stderr under Python's default filters
    (not pytest's), an uncaught exception printed as a traceback with exit status 1."""
    from mobilenet.cli import main

    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        warnings.resetwarnings()
        for action, category, module in DEFAULT_FILTERS:
            warnings.filterwarnings(action, category=category, module=module or "")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: err.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        try:
            if cwd is not None:
                os.chdir(cwd)
            code = main([str(a) for a in args])
        except SystemExit as stop:  # argparse's --help
            code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        except Exception:  # noqa: BLE001 - what the interpreter would print, and its exit status
            traceback.print_exc(file=err)
            code = 1
        finally:
            os.chdir(here)
    return subprocess.CompletedProcess(["mobilenet", *map(str, args)], code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    """Run the `mobilenet` command with ARGS (in this process: the same code as the command, without
    a new interpreter and a torch import each time); returns a CompletedProcess."""

    def run(*args: str, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
        return run_in_process(*args, cwd=cwd)

    return run


@pytest.fixture
def cli_process():
    """Run `python -m mobilenet ARGS...` in a new process, as a user does: for the end-to-end tests."""

    def run(*args: str, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mobilenet", *map(str, args)], capture_output=True,
                              text=True, cwd=cwd, timeout=timeout)

    return run


@pytest.fixture
def serve(monkeypatch):
    """Serve a folder over HTTP on 127.0.0.1 for the length of one test; returns its base URL."""
    for variable in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    servers = []

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    def start(folder: Path) -> str:
        handler = partial(QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory):
    """A V1 0.25 trained for four epochs on the digits, its learning rate decayed to zero (94-96% test
    top-1, ~5 s), as a checkpoint: the export tests' model. Stopped mid-schedule instead, a model's
    INT8 agreement swung from 91% to 97% with the order of its sums (the thread count)."""
    from mobilenet import create_model
    from mobilenet.checkpoint import ModelMeta, save_checkpoint
    from mobilenet.data import load_dataset

    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = create_model("mobilenet_v1", width_mult=0.25, num_classes=10).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    epochs, batches = 4, -(-len(train) // 32)
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / (epochs * batches))
    mean, std = torch.tensor(train.mean).view(1, 3, 1, 1), torch.tensor(train.std).view(1, 3, 1, 1)
    model.train()
    for epoch in range(epochs):
        for index in torch.randperm(len(train)).split(32):
            x = (train.images[index].float() / 255 - mean) / std
            loss = torch.nn.functional.cross_entropy(model(x), train.labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            decay.step()
    meta = ModelMeta(config=model.config, classes=train.classes, resolution=32, mean=train.mean, std=train.std)
    path = tmp_path_factory.mktemp("digits") / "model.safetensors"
    save_checkpoint(path, model.eval(), meta)
    return path, model
