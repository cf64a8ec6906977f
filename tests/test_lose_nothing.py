"""A run folder loses nothing: kills at every file operation of a save, one writer at a time,
copied and moved runs, a full disk, and folders that are not ours."""

import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mobilenet.checkpoint import read_safetensors
from mobilenet.files import TEMPORARY
from mobilenet.train import TrainConfig, TrainingError, train
from mobilenet.train.rundir import LOCK, RunFolder
from runs import tiny

TIMING = ("images_per_s", "epoch_time_s", "eval_time_s", "matmul_gflops", "bound_images_per_s", "of_bound")  # measured, not computed
# A run of the kill matrix: 5 steps an epoch.
SMALL = dict(classes=["0", "1"], resolution=12, min_resolution=8, resize_start=0, resize_end=0.5, batch_size=64,
             seed=1)  # progressive resizing too: epoch 1 trains at 8 pixels, epoch 2 at 12


def improving_every_epoch(patch) -> None:
    """Make each epoch's test top-1 beat the last (epoch / 10, the rest of the evaluation real), so that
    best.safetensors is written in both epochs and every kind of file operation is killed in both. This
    tiny model sits at chance after two epochs, where whether the second one "improves" was a coin
    flip that changed with the kernels and precision the step's probe chose."""
    from mobilenet.train import Run

    evaluate = Run.evaluate
    patch.setattr(Run, "evaluate", lambda run: dataclasses.replace(evaluate(run), top1=(run.epoch + 1) / 10))


def plain_curves(patch) -> None:
    """curves.png written as the trainer writes it (`atomic_output`, one replace per epoch) but not
    drawn: the file operations are this file's subject, and drawing was a third of each tiny run."""
    from mobilenet import plots
    from mobilenet.files import atomic_output

    def plot_curves(metrics, path, title=""):
        with atomic_output(path) as tmp:
            Path(tmp).write_bytes(b"\x89PNG\r\n\x1a\n" + json.dumps(metrics).encode())

    patch.setattr(plots, "plot_curves", plot_curves)


def weights(out) -> dict[str, torch.Tensor]:
    tensors, _ = read_safetensors(out / "state.safetensors")
    last, _ = read_safetensors(out / "last.safetensors")
    return {**tensors, **{f"last.{k}": v for k, v in last.items()}}


def metrics(out) -> list[dict]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if k not in TIMING} for m in lines]


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing on the way up handles it."""


def kill_at(monkeypatch, target: int, after: bool, folder) -> None:
    """Make the `target`-th os.replace into the run `folder` die before (the temporary file written and
    left behind, as a kill leaves it) or after it takes effect."""
    real, count = os.replace, [0]

    def replace(src, dst):
        if Path(dst).parent != Path(folder):  # not the run's files (e.g. the data root's caches)
            return real(src, dst)
        count[0] += 1
        if count[0] == target and not after:
            os.link(src, folder / f".stale{TEMPORARY}left-by-kill")  # what a kill would leave behind
            raise Killed
        real(src, dst)
        if count[0] == target and after:
            raise Killed

    monkeypatch.setattr(os, "replace", replace)


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """The run every broken one must end up equal to, and how many files its saves replace."""
    out = tmp_path_factory.mktemp("unbroken") / "run"
    real, count = os.replace, [0]

    def counting(src, dst):
        count[0] += Path(dst).parent == out  # the run's files only, not the data root's caches
        real(src, dst)

    os.replace = counting
    try:
        with pytest.MonkeyPatch.context() as patch:
            improving_every_epoch(patch)
            plain_curves(patch)
            train(tiny(out, **SMALL), progress=False)
    finally:
        os.replace = real
    return out, count[0]


def test_a_kill_at_any_file_operation_leaves_a_run_that_resumes_or_restarts_exactly(tmp_path, monkeypatch, unbroken):
    """Kill at each replace of config.json and both epochs' saves (best, state, last, metrics,
    curves), before and after it: what is left either resumes or (before the first committed
    epoch) starts afresh without any flag, and ends equal to the unbroken run, metrics included."""
    reference, operations = unbroken
    assert operations == 11  # config.json, then best, state, last, metrics and curves in each epoch
    improving_every_epoch(monkeypatch)
    plain_curves(monkeypatch)
    expected_weights, expected_metrics = weights(reference), metrics(reference)
    outcomes = set()
    for target in range(1, operations + 1):
        for after in (False, True):
            out = tmp_path / f"kill{target}{'after' if after else 'before'}"
            with monkeypatch.context() as patch:
                kill_at(patch, target, after, out)
                with pytest.raises(Killed):
                    train(tiny(out, **SMALL), progress=False)
            resumable = (out / "state.safetensors").exists()
            outcomes.add(resumable)
            train(TrainConfig(out=str(out)) if resumable else tiny(out, **SMALL), resume=resumable, progress=False)
            got = weights(out)
            assert got.keys() == expected_weights.keys()
            for key, value in expected_weights.items():
                assert torch.equal(got[key], value), (target, after, key)
            assert metrics(out) == expected_metrics, (target, after)
            assert not [p.name for p in out.iterdir() if TEMPORARY in p.name], (target, after)
    assert outcomes == {True, False}  # both kinds of recovery were exercised


def test_resume_takes_the_folder_it_is_given_not_the_one_in_its_config(tmp_path, cli):
    original = tmp_path / "original"
    train(tiny(original, epochs=2), stop_after=1, progress=False)
    before = {p.name: p.read_bytes() for p in original.iterdir() if p.is_file()}
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.copytree(original, moved)
    # resuming the copy, from another working directory with a relative path, trains the copy
    proc = cli("train", "--out", "copy", "--resume", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 2/2" in proc.stdout and len(metrics(copy)) == 2
    assert {p.name: p.read_bytes() for p in original.iterdir() if p.is_file()} == before  # untouched
    proc = cli("train", "--out", "moved", "--resume", "--no-progress", cwd=moved.parent)
    assert proc.returncode == 0, proc.stderr
    assert len(metrics(moved)) == 2


def test_a_relative_data_folder_is_recorded_absolute(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    for split in ("train", "val"):
        for name in ("a", "b"):
            (folder / split / name).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    config = tiny("run", data="imgs", classes=None).with_absolute_paths()
    assert config.data == str(folder) and config.out == "run"
    assert tiny("run").with_absolute_paths().data == "digits"


def test_a_run_records_its_data_and_a_resume_on_other_data_is_refused(tmp_path, monkeypatch):
    """A named dataset read from the default root records that root (absolute) and a fingerprint of
    its files: a resume under another $MOBILENET_DATA reads the run's own data, and a resume after
    those files changed (re-extracted from another archive) is refused in one line."""
    from test_mnist import write_idx_set

    first, other = tmp_path / "first", tmp_path / "other"
    write_idx_set(first / "fashion-mnist", seed=0)
    write_idx_set(other / "fashion-mnist", seed=1)
    monkeypatch.setenv("MOBILENET_DATA", str(first))
    out = tmp_path / "run"
    config = tiny(out, data="fashion-mnist", classes=None, resolution=None, epochs=3, batch_size=40)
    train(config, stop_after=1, progress=False)
    assert json.loads((out / "config.json").read_text())["data_root"] == str(first)
    monkeypatch.setenv("MOBILENET_DATA", str(other))
    train(tiny(out), resume=True, stop_after=1, progress=False)  # the run's own root, not $MOBILENET_DATA
    assert len(metrics(out)) == 2
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    write_idx_set(first / "fashion-mnist", seed=2)  # the same names and sizes, other pixels
    with pytest.raises(TrainingError, match="is not what .* trained on .*resuming would mix two datasets"):
        train(tiny(out), resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_one_writer_per_run_folder(tmp_path, cli):
    """The lock is held by this process (a second one, the CLI, is refused and names our pid);
    it is free again the moment the holder closes it (the kernel frees it on any exit)."""
    out = tmp_path / "run"
    folder = RunFolder(out)
    folder.acquire()
    try:
        proc = cli("train", "--out", out, "--epochs", "1", "--no-progress")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert f"in use by another training process (pid {os.getpid()})" in proc.stderr
        assert not (out / "config.json").exists()
    finally:
        folder.release()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from mobilenet.train.rundir import RunFolder
        RunFolder({str(out)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TrainingError, match=f"pid {holder.pid}"):
            train(tiny(out), progress=False)
    finally:
        holder.kill()
        holder.wait()
    train(tiny(out, epochs=1), progress=False)  # the killed holder's lock went with it


def test_a_folder_that_is_not_a_run_is_never_overwritten(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text("my own settings")
    (out / "metrics.jsonl").write_text("my own numbers")
    with pytest.raises(TrainingError, match="holds config.json, metrics.jsonl that no mobilenet run is writing"):
        train(tiny(out), progress=False)
    assert (out / "config.json").read_text() == "my own settings"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.jsonl"]  # no lock left either
    with pytest.raises(TrainingError, match="empty path"):
        train(tiny(""), progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrainingError, match="is a file, not a folder"):
        train(tiny(tmp_path / "file"), progress=False)


def test_stale_temporary_files_are_removed_on_the_next_start(tmp_path):
    out = tmp_path / "run"
    train(tiny(out, epochs=2), stop_after=1, progress=False)
    stale = out / f".last{TEMPORARY}abc123.safetensors"
    stale.write_bytes(b"half a file")
    train(TrainConfig(out=str(out)), resume=True, progress=False)
    assert not stale.exists() and (out / LOCK).exists()


def tmpfs(path, size: str):
    """A small tmpfs at `path` (root only); the caller unmounts it."""
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return proc.returncode == 0


def test_a_full_disk_is_one_line_and_keeps_the_last_epoch(tmp_path, cli):
    """On a real full file system where one is allowed (a small tmpfs; root only), else on a
    write that raises ENOSPC: the command ends in one line, exit 2, and the run resumes."""
    disk = tmp_path / "disk"
    if tmpfs(disk, "3m"):
        try:
            out = disk / "run"
            proc = cli("train", "--out", out, "--model", "mobilenet_v1", "--width", "1", "--small-input",
                       "--resolution", "16", "--classes", "0,1", "--epochs", "3", "--batch-size", "64",
                       "--no-progress")
            assert proc.returncode == 2, proc.stderr
            assert "no space left on the device" in proc.stderr and "Traceback" not in proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1
            assert not [p.name for p in out.iterdir() if TEMPORARY in p.name]
        finally:
            subprocess.run(["umount", str(disk)], check=True)
    from mobilenet import files

    out = tmp_path / "run"
    train(tiny(out), stop_after=1, progress=False)
    real = files.os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    files.os.replace = full
    try:
        with pytest.raises(OSError, match="no space left on the device .* keeps its previous content"):
            train(TrainConfig(out=str(out)), resume=True, progress=False)
    finally:
        files.os.replace = real
    assert len(metrics(out)) == 1
    train(TrainConfig(out=str(out)), resume=True, progress=False)
    assert len(metrics(out)) == 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_export_leaves_no_temporary_files_for_long(tmp_path, signum):
    """SIGTERM cleans up like Ctrl-C (exit 143, no `.NAME.tmp-*` file, no `mobilenet-*` folder);
    what SIGKILL leaves behind is removed by the next command that writes there."""
    pytest.importorskip("openvino")
    out = tmp_path / "run"
    train(tiny(out, epochs=1), progress=False)
    temporary, target = tmp_path / "tmp", tmp_path / "exports"
    temporary.mkdir()
    target.mkdir()
    env = {**os.environ, "TMPDIR": str(temporary)}
    command = [sys.executable, "-m", "mobilenet", "export", str(out / "last.safetensors")]
    job = subprocess.Popen([*command, "--output", str(target / "m.xml")], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    for _ in range(600):  # until it is at work: its temporary files and folder exist
        if list(target.iterdir()) and list(temporary.iterdir()) or job.poll() is not None:
            break
        time.sleep(0.05)
    assert job.poll() is None, job.communicate()
    job.send_signal(signum)
    _, err = job.communicate(timeout=60)
    left = list(target.iterdir()) + list(temporary.iterdir())
    if signum == signal.SIGTERM:
        assert job.returncode == 143 and "stopped by SIGTERM" in err and left == [], (job.returncode, err, left)
        return
    assert job.returncode == -signal.SIGKILL and left  # killed: its temporaries are still there
    done = subprocess.run([*command, "--output", str(target / "n.xml")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in target.iterdir()) == ["n.bin", "n.xml"] and list(temporary.iterdir()) == []
