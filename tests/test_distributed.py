"""Data-parallel training under torchrun, on CPU with gloo, two processes on 127.0.0.1."""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mobilenet.checkpoint import load_checkpoint

WORKER = Path(__file__).with_name("dist_worker.py")
TINY = ["--width", "0.25", "--small-input", "--resolution", "16", "--classes", "0,1,2", "--batch-size", "16",
        "--lr", "0.05", "--no-progress"]


def torchrun(*args, nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    """torchrun on loopback only: one node, its rendezvous store on a port of 127.0.0.1 that it binds
    itself (port 0), so that no other process can take the port between choosing and binding it."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
               "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", f"--rdzv-id={uuid.uuid4().hex}",
               *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def test_two_processes_equal_one_process_with_twice_the_batch(tmp_path):
    """Also (--collectives): after each collective returns, gloo's worker thread holds none of its
    tensors; it would otherwise drop them a moment later, taking the GIL, and a rank that exits in
    that moment aborts (this made the resume test below fail one run in ten)."""
    from dist_worker import config

    from mobilenet.train import Run

    double = torchrun(WORKER, tmp_path / "two", "16", "--collectives")
    assert double.returncode == 0, double.stderr
    # the reference, in this process, after: beside the ranks it made them wait for each other at every step
    reference = Run(config(str(tmp_path / "one"), 32), progress=False)
    reference.run()
    reference = {k: v.contiguous() for k, v in reference.model.state_dict().items()}
    rank0 = load_file(tmp_path / "two" / "rank0.safetensors")
    rank1 = load_file(tmp_path / "two" / "rank1.safetensors")
    assert reference.keys() == rank0.keys() == rank1.keys()
    for key, value in reference.items():
        assert torch.equal(rank0[key], rank1[key]), f"ranks differ at {key}"
        torch.testing.assert_close(rank0[key], value, rtol=1e-4, atol=1e-5, msg=key)
    # and they trained: most tensors moved from the seed's initial values
    from mobilenet import create_model

    torch.manual_seed(5)
    fresh = create_model("mobilenet_v1", width_mult=0.25, num_classes=3, small_input=True).state_dict()
    moved = sum(not torch.equal(fresh[k], reference[k]) for k in reference if reference[k].is_floating_point())
    assert moved > 20
    # the global evaluation counts the whole test split once
    for run in ("one", "two"):
        metrics = json.loads((tmp_path / run / "metrics.jsonl").read_text())
        assert metrics["test_images"] == 108


def test_two_process_run_writes_one_set_of_outputs_and_resumes(tmp_path):
    out = tmp_path / "run"
    first = torchrun("-m", "mobilenet", "train", "--out", out, "--epochs", "2", "--stop-after", "1", *TINY)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("epoch 1/2") == 1  # only rank 0 reports
    assert sorted(p.name for p in out.iterdir()) == [".lock", "best.safetensors", "config.json", "curves.png",
                                                     "last.safetensors", "metrics.jsonl", "state.safetensors"]
    resumed = torchrun("-m", "mobilenet", "train", "--out", out, "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "epoch 2/2" in resumed.stdout and "epoch 1/2" not in resumed.stdout
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and lines[1]["step"] == 2 * lines[0]["step"]
    model, meta = load_checkpoint(out / "last.safetensors", with_meta=True)  # loads in one process
    assert meta.classes == ["0", "1", "2"] and model(torch.randn(1, 3, 16, 16)).shape == (1, 3)


def test_a_failing_rank_stops_the_whole_job(tmp_path):
    start = time.monotonic()
    proc = torchrun(WORKER, tmp_path / "fail", "16", "--fail-rank", "1", timeout=90)
    assert proc.returncode != 0
    assert time.monotonic() - start < 60
    assert "injected failure on rank 1" in proc.stderr
    assert not (tmp_path / "fail" / "last.safetensors").exists()


def test_sync_bn_on_cpu_is_refused_in_one_line(tmp_path):
    proc = torchrun("-m", "mobilenet", "train", "--out", tmp_path / "s", "--epochs", "1", "--sync-bn", *TINY)
    assert proc.returncode != 0
    # each rank says it in one line; the traceback torchrun's agent prints after is its own
    assert proc.stderr.count("mobilenet: error: --sync-bn needs GPUs") == 2
    assert "mobilenet/train" not in proc.stderr


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_single_process_needs_no_process_group():
    from mobilenet.train import from_environment

    dist = from_environment()
    assert not dist.enabled and dist.is_main and dist.all_reduce(torch.ones(1)).item() == 1
