"""Durable file writes: what a crash or a power loss may not leave half written.

``fsync_path`` flushes a file (or a folder's entries) before it is renamed or recorded as done;
``atomic_path`` is "write a temporary name, fsync, rename over, fsync the folder" for any writer (a
file or a whole folder), ``atomic_write_text`` that for text. Every "temporary name, then rename" of
the package goes through them.

    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp))
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to the device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


@contextmanager
def atomic_path(path: Path, shared: bool = False):
    """A temporary path beside ``path`` for the caller to write (a file, or a folder it creates); when the
    block ends without an error it is fsynced (a folder: every file in it) and renamed over ``path`` (a
    folder replaces only an absent or empty one), and the parent folder is fsynced. On an error the
    temporary is removed and ``path`` is untouched: a reader sees the old version or the new, whole.
    ``shared``: several processes may write the same folder at once (ranks): each has its own temporary,
    and the first whole folder renamed in place stays (the others are dropped)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one name: a writer killed mid-way leaves one file the next replaces; shared: one per process
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp" if shared else f".{path.name}.tmp")
    _remove(tmp)
    try:
        yield tmp
        for f in ([p for p in tmp.rglob("*") if p.is_file()] if tmp.is_dir() else [tmp]):
            fsync_path(f)
        if tmp.is_dir() and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        try:
            os.replace(tmp, path)
        except OSError:
            if not (shared and tmp.is_dir() and path.is_dir()):   # another process's folder got there first
                raise
        fsync_path(path.parent)
    finally:
        _remove(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """After a power loss ``path`` holds either the old or the new text, never an empty file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
