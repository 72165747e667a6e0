"""A data directory's identity in task ids: its name and what it holds, not where it lives.

Task ids name run directories, so "submitting again skips finished tasks" needs them to stay
put when a data set moves (staged to scratch, a renamed parent folder). The identity is the
directory's name and a fingerprint of its data files: the sorted relative paths and sizes of the
files the loaders read (images, masks, volumes, split files, by suffix). Other files (notes,
hidden files, caches) do not count, so a README written beside the data keeps the ids; a case
added, removed or replaced by one of another size changes them. Names and sizes, not contents:
a sweep names a handful of directories and each is walked once per process (while its mtime
holds), which costs one ``stat`` per file rather than reading gigabytes.
"""

from __future__ import annotations

import functools
import hashlib
import os

__all__ = ["DATA_SUFFIXES", "data_identity"]

DATA_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".npy", ".npz", ".nii", ".nii.gz",
                 ".json")


def data_identity(path: str | os.PathLike) -> tuple[str, str]:
    """(name, fingerprint) of the data directory ``path``; the fingerprint of a missing one is ''."""
    path = os.path.abspath(os.fspath(path))
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        mtime = None
    return os.path.basename(path), _fingerprint(path, mtime)


@functools.lru_cache(maxsize=256)
def _fingerprint(path: str, mtime: int | None) -> str:
    """16 hex digits of SHA-256 over ``relative/path\\0size\\n`` of the data files, sorted."""
    if mtime is None:
        return ""
    entries = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(".") or not name.lower().endswith(DATA_SUFFIXES):
                continue
            full = os.path.join(root, name)
            try:
                size = os.stat(full).st_size
            except OSError:  # a dangling link is no data file
                continue
            entries.append(f"{os.path.relpath(full, path)}\0{size}\n")
    return hashlib.sha256("".join(sorted(entries)).encode()).hexdigest()[:16]
