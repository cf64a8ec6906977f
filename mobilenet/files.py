"""Writing files so that nothing half-written is ever left: the one place for atomic output and
verified downloads, used by checkpoints, run directories, exports, datasets and weights."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import http.client
import os
import shutil
import signal
import stat
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm import tqdm

CHUNK = 1 << 20
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)  # permissions, or a read-only file system
TEMPORARY = ".tmp-"  # in the names of atomic_output's temporary files: `.<stem>.tmp-<pid>-<random><suffix>`
FOLDER_PREFIX = "mobilenet-"  # temporary folders: `<tmp>/mobilenet-<purpose>-<pid>-<random>`
TERMINATING = (signal.SIGTERM, signal.SIGHUP)  # handled like Ctrl-C: temporary files removed on the way out


def refuse_special(path: str | os.PathLike, what: str = "output") -> None:
    """ValueError if `path` exists and is not a regular file (a symbolic link, a device node, a named
    pipe, a socket): writing one replaces the link or the node itself, and reading one can block for
    ever. Checked with lstat, before anything is opened."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise OSError(f"cannot read {what} {path}: {error.strerror}") from None
    kind = ("a symbolic link" if stat.S_ISLNK(mode) else "a named pipe" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else None)
    if kind:
        raise ValueError(f"{what} {path} is {kind}, not a regular file; give a regular file's path")


def require_regular(path: str | os.PathLike, what: str = "file") -> None:
    """ValueError unless `path` (followed if it is a link) is a regular file: an input that is a named
    pipe or a device would block or never end, and is refused before it is opened. A missing file
    is left for the opener to report."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if stat.S_ISDIR(mode):
        raise ValueError(f"{what} {path} is a folder, not a file")
    if not stat.S_ISREG(mode):
        kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device")
        raise ValueError(f"{what} {path} is {kind}, not a regular file")


def _temporary_file(path: Path) -> Path:
    """A new private file beside `path` named for it and this process (see `remove_temporaries`)."""
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(f"output {path} is a folder; give a file name")
    refuse_special(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}{TEMPORARY}{os.getpid()}-", suffix=path.suffix.lower(),
                                    dir=path.parent)
    except OSError as error:
        if error.errno in NOT_WRITABLE:
            raise PermissionError(f"folder {path.parent} is not writable") from None
        raise
    os.close(fd)
    return Path(name)


def _finish(tmp: Path) -> None:
    """Make a written temporary file durable, with a new file's usual mode (mkstemp's is 0600)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file beside `path` to write (and check); it replaces `path` only if the
    block succeeds and is deleted otherwise (an error, Ctrl-C, SIGTERM), so `path` holds either its
    old content or the whole new one. The temporary name keeps `path`'s suffix, which some writers
    insist on in lower case (torch.export wants ".pt2", OpenVINO ".xml"). A `path` that is not a
    regular file is refused."""
    with atomic_outputs(path) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_outputs(*paths: str | os.PathLike) -> Iterator[tuple[Path, ...]]:
    """`atomic_output` for files that belong together (an OpenVINO .xml and its .bin): yields one
    temporary file for each, and replaces them all or none. They are renamed in order, the last
    one being the commit point; the termination signals wait until the renames are done, and if one
    rename fails the files already replaced get their old content back."""
    paths = tuple(Path(path) for path in paths)
    temporaries: list[Path] = []
    try:
        for path in paths:
            temporaries.append(_temporary_file(path))
        yield tuple(temporaries)
        for tmp in temporaries:
            _finish(tmp)
        _commit(paths, temporaries)
    except Exception as error:
        if _disk_full(error):
            raise OSError(errno.ENOSPC, f"no space left on the device to write {paths[-1]}; "
                                        f"{paths[-1].name} keeps its previous content") from None
        raise
    finally:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)


def _commit(paths: tuple[Path, ...], temporaries: list[Path]) -> None:
    """Rename each temporary file onto its path, all or none (see `atomic_outputs`)."""
    if len(paths) == 1:
        os.replace(temporaries[0], paths[0])
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, *TERMINATING})
    backups: list[Path] = []
    done: list[tuple[Path, Path | None]] = []  # (path replaced, a hard link to its old content or None)
    try:
        for path, tmp in zip(paths, temporaries):
            backup = None
            if path.exists():
                backup = path.with_name(f".{path.stem}{TEMPORARY}{os.getpid()}-old{path.suffix}")
                backup.unlink(missing_ok=True)
                try:
                    os.link(path, backup)
                except OSError:  # a file system without hard links
                    shutil.copyfile(path, backup)
                backups.append(backup)
            os.replace(tmp, path)
            done.append((path, backup))
    except BaseException:
        for path, backup in done:
            if backup is not None:
                os.replace(backup, path)
            else:
                path.unlink(missing_ok=True)
        raise
    finally:
        for backup in backups:
            backup.unlink(missing_ok=True)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """`atomic_output` for a folder (a Core ML package, the files of a QAT run): yields a path beside
    `path`, on the same file system, for the block to create and fill; it takes `path`'s place only
    if the block succeeds, else it is deleted. A folder already at `path` is moved aside first and
    deleted last, so at every moment one whole folder exists under one of the two names. Work
    folders of processes that died are removed first."""
    path = Path(path)
    remove_stale(path.parent, f".{path.name}{TEMPORARY}")
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}{TEMPORARY}folder-{os.getpid()}-", dir=path.parent))
    folder = work / path.name  # made by the block, with a folder's usual mode (mkdtemp's own is private)
    try:
        yield folder
        if path.exists():
            os.replace(path, work / "old")  # deleted with `work`
        os.replace(folder, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def temporary_folder(purpose: str) -> Iterator[Path]:
    """A temporary folder named for `purpose` and this process, removed on the way out (an error,
    Ctrl-C, SIGTERM); folders of processes that died without removing theirs go first."""
    remove_stale(Path(tempfile.gettempdir()), FOLDER_PREFIX)
    with tempfile.TemporaryDirectory(prefix=f"{FOLDER_PREFIX}{purpose}-{os.getpid()}-") as folder:
        yield Path(folder)


def _pid_of(name: str, marker: str) -> int | None:
    """The process id written after `marker` in a temporary name (`...<marker><pid>-...`)."""
    rest = name.split(marker, 1)[1] if marker in name else ""
    digits = rest.split("-", 1)[0] if "-" in rest else ""
    return int(digits) if digits.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale(folder: Path, prefix: str) -> None:
    """Delete the temporary folders `<prefix><purpose>-<pid>-*` in `folder` whose process is gone."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
            continue
        parts = entry.name[len(prefix):].split("-")
        pid = next((int(part) for part in parts[1:2] if part.isdigit()), None)
        if pid is not None and pid != os.getpid() and not _alive(pid):
            shutil.rmtree(entry.path, ignore_errors=True)


def _disk_full(error: BaseException) -> bool:
    """ENOSPC, whether raised by Python or reported in the message of a library's own error
    (safetensors raises SafetensorError("... No space left on device (os error 28)"))."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return "No space left on device" in str(error) or "os error 28" in str(error)


def remove_temporaries(folder: str | os.PathLike, *, all_of_them: bool = True) -> list[Path]:
    """Delete the temporary files that killed processes left in `folder` (from `atomic_output`);
    returns them. `all_of_them`: every one, for a caller that knows no other process writes there
    (a run holds its lock); otherwise only those whose process is gone."""
    removed = []
    for entry in Path(folder).iterdir():
        if entry.name.startswith(".") and TEMPORARY in entry.name and entry.is_file() and not entry.is_symlink():
            pid = _pid_of(entry.name, TEMPORARY)
            if not all_of_them and (pid is None or pid == os.getpid() or _alive(pid)):
                continue
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that every `finally` on the way out runs (temporary
    files and folders are removed, a training run keeps its last finished epoch)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def clean_up_on_termination() -> None:
    """Turn SIGTERM and SIGHUP into `Terminated` in this (main) process. Processes forked from it
    (data loader workers) are left to die as they would have."""
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated(signum)

    for signum in TERMINATING:
        if signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, handler)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same resolved path, or the same inode (a hard link,
    a bind mount) when both exist."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwrite(output: str | os.PathLike, inputs: dict[str, str | os.PathLike | None]) -> None:
    """Raise ValueError if `output` is one of `inputs` ({what: path}): checked before any work, so
    a command never replaces the file it reads with the file it writes."""
    for what, path in inputs.items():
        if path is not None and str(path) and same_file(output, path):
            raise ValueError(f"the output {output} is the {what} it is made from; write it to another file")


def check_output_path(path: str | os.PathLike) -> Path:
    """`path` as a Path, after checking that its folder exists and is writable, and that `path` is not
    a folder: the cheap checks, made before any slow work."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(f"output {path} is a folder; give a file name")
    refuse_special(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {path.parent} does not exist")
    remove_temporaries(path.parent, all_of_them=False)
    try:  # the one sure test of writability (permissions, read-only mounts, root) is to write
        fd, probe = tempfile.mkstemp(prefix=f".{path.stem}.probe-", dir=path.parent)
    except OSError as error:
        if error.errno in NOT_WRITABLE:
            raise PermissionError(f"output folder {path.parent} is not writable") from None
        raise
    os.close(fd)
    os.unlink(probe)
    return path


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace a text file atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, value) -> Path:
    """Replace a JSON file (indented, as the results files are) atomically, its folder made if needed;
    returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(value, indent=2) + "\n")
    return path


def read_cache(path: str | os.PathLike | None, say: Callable[[str], None] | None = None) -> dict:
    """The JSON object of a decision cache (e.g. `<data root>/runtime-choices.json`); empty if the
    file is missing, unreadable or not an object (then `say` hears one line): a lost cache only
    costs a measurement. Each entry is the reader's to validate."""
    if not path or not os.path.lexists(path):
        return {}
    try:
        refuse_special(path, "cache")
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        data = error
    if isinstance(data, dict):
        return data
    if say:
        why = "is not a JSON object" if not isinstance(data, Exception) else f"cannot be read ({_one_line(data)})"
        say(f"note: the cache {path} {why}; ignoring it and measuring again")
    return {}


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:160]


def update_cache(path: str | os.PathLike, key: str, value) -> None:
    """Set `key` in the decision cache at `path` (atomically); a cache that cannot be written is let go."""
    data = read_cache(path)
    data[key] = value
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(data, indent=1) + "\n")
    except OSError:
        pass


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, destination: str | os.PathLike, *, algorithm: str, verify: Callable[[Path, str], None],
             progress: bool = True, timeout: float = 60.0) -> str:
    """Fetch `url` into `destination` with a progress bar (bytes, rate, ETA); returns the file's
    digest under `algorithm`. `verify(temporary_path, digest)` raises if the bytes are wrong; only
    then is `destination` replaced, so a broken or interrupted download leaves nothing behind.
    Network failures raise OSError naming the URL; a short read raises ValueError."""
    destination = Path(destination)
    with atomic_output(destination) as tmp:
        digest, written = hashlib.new(algorithm), 0
        request = urllib.request.Request(url, headers={"User-Agent": "mobilenet"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
                size = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=destination.name,
                          disable=not progress, file=sys.stderr) as bar:
                    for chunk in iter(lambda: response.read(CHUNK), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        written += len(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            raise OSError(f"download of {url} failed: {error}") from error
        if size is not None and written != size:
            raise ValueError(f"download of {url} truncated: {written} of {size} bytes")
        verify(tmp, digest.hexdigest())
    return digest.hexdigest()
