"""Crash-safe file operations shared by the local object store and the spool.

Every function here blocks: callers run them in a worker thread, never on the event loop.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import uuid
from pathlib import Path

TEMP_PREFIX = ".tmp-"  # names that start with this are half-written and never served


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creates, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk (works on a file written by someone else, too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """Create ``path`` and missing parents, fsyncing each parent so new entries survive a crash."""
    missing: list[Path] = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # a concurrent writer made it; it fsyncs the parent itself
        fsync_dir(directory.parent)


def temp_path_for(dest: Path) -> Path:
    """A unique hidden temporary name beside ``dest`` (same directory, so same filesystem)."""
    return dest.with_name(f"{TEMP_PREFIX}{dest.name}.{uuid.uuid4().hex}")


def write_atomic(dest: Path, data: bytes, mode: int = 0o666, *, sync_dir: bool = True) -> None:
    """Replace ``dest`` with ``data`` so that a crash leaves either the old or the new content.

    ``mode`` (less the umask) is set from the start: a secret is never readable by others.
    ``sync_dir=False`` leaves the directory's fsync to the caller (one for several entries).
    """
    tmp = temp_path_for(dest)
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(dest.parent)


def copy_durable(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` (which must not be visible to readers yet) and fsync it."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1024 * 1024)
        fout.flush()
        os.fsync(fout.fileno())


def place_atomic(src: Path, dest: Path, *, move: bool, sync_dir: bool = True) -> None:
    """Put ``src``'s content at ``dest`` atomically: rename (``move``) or hard link, else copy.

    Rename and link only work within one filesystem; any other case falls back to a fsync'd
    copy. With ``move`` the source is gone afterwards; without it the source stays put.
    ``sync_dir=False`` leaves the fsync of ``dest``'s directory to the caller.
    """
    tmp = temp_path_for(dest)
    try:
        if move:
            try:
                os.replace(src, dest)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
            else:
                fsync_file(dest)  # the writer may not have flushed it
                if sync_dir:
                    fsync_dir(dest.parent)
                return
        linked = False
        if not move:
            try:
                os.link(src, tmp)
                linked = True
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise
        if linked:
            fsync_file(tmp)
        else:
            copy_durable(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir or move:  # a cross-filesystem move must be durable before the source goes
        fsync_dir(dest.parent)
    if move:
        src.unlink(missing_ok=True)  # copied across filesystems: only now is the move complete


def remove_quietly(path: Path) -> bool:
    """Unlink ``path``; true when it existed."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class DirectoryInUse(Exception):
    """Another process holds the directory's lock (``lock_directory``)."""


LOCK_FILE = ".lock"


def lock_directory(directory: Path) -> int:
    """Take ``directory``'s exclusive lock for as long as this process lives (the returned
    descriptor stays open; the kernel lets go when the process ends, however it ends), and
    write this process's id into the lock file. ``DirectoryInUse`` naming the holder when
    another process has it."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise DirectoryInUse(f"{directory} is in use by another process (pid {holder})") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
