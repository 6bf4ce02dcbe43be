"""Atomic writes of files and folders: readers see the old content or the whole new one, never a part of it.

A temporary file in the destination folder is written, flushed to disk and renamed over the target, so
Ctrl-C, a kill or a full disk leaves the previous file intact.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tagtune.errors import UserError


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (mkstemp creates 0600 files)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------------------------------- folders

STAGING_MARK = ".staging-"
OLD_MARK = ".old-"


@contextmanager
def publish_folder(out_dir: str | Path):
    """Build a folder beside ``out_dir`` and rename it into place when the block ends without an error.

    Yields the staging folder. Until the rename nothing at ``out_dir`` changes: a kill or an error leaves the
    previous folder (or none) as it was, never a half-written one that looks complete. An existing
    ``out_dir`` is replaced whole (no stale files survive) and removed only once the new one is in place.
    Staging folders left by killed processes are swept the next time the same folder is published.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(out_dir)
    staging = out_dir.parent / f".{out_dir.name}{STAGING_MARK}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}{OLD_MARK}{os.getpid()}"
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sweep_stale(out_dir: Path) -> None:
    """Tidy what processes that no longer run left beside ``out_dir``: staging copies are removed; a replaced
    copy is put back when a kill came between the two renames of ``publish_folder`` (``out_dir`` is missing),
    and removed otherwise."""
    for marker in (STAGING_MARK, OLD_MARK):
        stale = [p for p in out_dir.parent.glob(f".{glob.escape(out_dir.name)}{marker}*") if _left_by_dead(p)]
        for path in sorted(stale, key=lambda p: p.stat().st_mtime, reverse=True):  # newest first
            if marker == OLD_MARK and not out_dir.exists() and path.is_dir():
                os.replace(path, out_dir)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _left_by_dead(path: Path) -> bool:
    pid = path.name.rsplit("-", 1)[-1]
    return pid.isdigit() and not _alive(int(pid))


def sweep_temp_files(folder: str | Path, pattern: str = ".*.tmp") -> list[Path]:
    """Remove temporary files an interrupted atomic write left in ``folder`` (recursively); returns them."""
    removed = []
    for path in Path(folder).rglob(pattern):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------------------- checks


class OutputError(UserError):
    """An output path that cannot be written: a folder where a file is wanted, a read-only place, ..."""


def check_writable(path: str | Path, folder: bool = False, param: str | None = None) -> None:
    """Raise OutputError unless a file (or, with ``folder``, a folder) can be written at ``path``.

    Checked before any work is done, by creating and removing a probe file in the nearest existing folder
    on the way to ``path`` (``os.access`` misses read-only mounts and answers yes to root). Nothing at
    ``path`` is created or changed. ``param``: the caller's argument that gave ``path``, for the error.
    """
    path = Path(path)

    def refuse(message: str) -> OutputError:
        return OutputError(message, params=(param,) if param else ())

    if path.exists() or path.is_symlink():
        if not folder and (path.is_dir() or not path.is_file()):
            kind = "a folder" if path.is_dir() else "not a regular file"
            raise refuse(f"cannot write {path}: it is {kind}; give a file name")
        if folder and not path.is_dir():
            raise refuse(f"cannot write the folder {path}: a file of that name exists")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise refuse(f"cannot write {path}: {parent} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".tagtune-probe-", suffix=".tmp")
    except OSError as e:
        raise refuse(f"cannot write {path}: {parent} is not writable ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)
