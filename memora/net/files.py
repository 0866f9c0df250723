"""Small, durable file operations shared by the log, the snapshot store and the hard state.

What lives here: creating a directory durably, fsyncing a directory, replacing a file atomically
(temp file in the same directory, fsync, rename, fsync the directory) and reading a whole file.
What must not: any knowledge of Memora's file formats or names. Callers decide what the bytes mean.
"""

from __future__ import annotations

import os
import tempfile


def fsync_directory(path: str) -> None:
    """Make the directory's entries (creations, renames, deletions) durable."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def make_directory(path: str) -> None:
    """Create `path` (and missing parents) if it does not exist, and make its entry durable."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    make_directory(parent)
    os.makedirs(path, exist_ok=True)
    fsync_directory(parent)


def write_all(descriptor: int, data: bytes | memoryview) -> None:
    """Write every byte: `os.write` may write fewer bytes than asked."""
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        assert written > 0, written
        view = view[written:]


def write_file_atomically(path: str, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file, whole."""
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary_path = tempfile.mkstemp(
        dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp"
    )
    try:
        try:
            write_all(descriptor, data)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary_path, path)
    except BaseException:
        if os.path.exists(temporary_path):
            os.unlink(temporary_path)
        raise
    fsync_directory(directory)


def read_file(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()
