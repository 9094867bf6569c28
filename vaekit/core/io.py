"""Outputs are written atomically: a crash never leaves a half-written file or folder, and what a killed
run leaves behind (a hidden ``.NAME.PID.*.part`` beside the output) is swept by the next run."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_PART = ".part"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def _temp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


def sweep_stale(parent: Path, name: str) -> int:
    """Remove the temporaries of ``name`` that killed runs left in ``parent``; returns how many."""
    swept = 0
    for leftover in parent.glob(f".{glob.escape(name)}.*.*{_PART}*"):
        pid = leftover.name[len(name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            swept += 1
    return swept


def _make_parent(path: Path) -> None:
    """Create ``path``'s folder, or say in one line that the output location cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(errno.EACCES, "permission denied")
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise PermissionError(
            f"cannot write to {path.parent} ({err.strerror or err}); choose another output location with --out"
        ) from err


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    The temporary file is in ``path``'s own folder, so the final rename never crosses filesystems (a
    cross-device move truncates the destination before copying). ``durable`` also flushes the file and
    the folder to the disk, so a power cut after return keeps the new file: for checkpoints.
    """
    path = Path(path)
    _make_parent(path)
    if not path.parent.name.endswith(_PART):  # inside a staging folder there is nothing stale to sweep
        sweep_stale(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=_PART + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes private files; outputs get normal permissions
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_folder(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; if the block succeeds it becomes ``path``.

    Old and new outputs are never mixed: a ``path`` that already holds files is an error unless
    ``overwrite``, and then it is replaced as a whole. A killed run leaves only the hidden staging
    folder, which the next run into the same place removes.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a folder; pass a folder to --out")
    existing = sorted(path.iterdir()) if path.is_dir() else []
    if existing and not overwrite:
        raise FileExistsError(
            f"{path} already holds {len(existing)} file(s) from an earlier run (e.g. {existing[0].name}); "
            "pass --overwrite to replace them, or choose another --out"
        )
    _make_parent(path)
    sweep_stale(path.parent, path.name)
    staging = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=_PART, dir=path.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes a private folder
        if existing:
            retired = staging.with_name(staging.name.replace(_PART, ".old" + _PART))
            os.replace(path, retired)
            os.replace(staging, path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, path)  # also over an empty folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


class RunLock:
    """An exclusive lock on a run's folder, so two trainings never write into one: ``flock`` on a hidden file,
    which the kernel releases when the process ends, so a killed run never leaves a stale lock."""

    NAME = ".vaekit-run.lock"

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / self.NAME
        self.handle: Any = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the run, closed by release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise FileExistsError(
                f"{self.path.parent} is in use by another `vaekit fit` (pid {holder}); wait for it to finish, or "
                "train into another --trainer.default_root_dir"
            ) from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the descriptor releases the flock
            self.handle = None
