"""What the submitting host knows about a built image without running it: its digest and the
checkpoints baked into it.

``medsam2-hpc container build`` writes a record beside the image, ``<image>.json``:
``{"sha256", "size", "mtime_ns", "revision", "checkpoints"}`` (``checkpoints``: the file names
baked into :data:`medsam2_hpc.checkpoints.BAKED_DIR`). The launcher passes the digest into the
job (``MEDSAM2_IMAGE_DIGEST``, recorded in metrics.json's ``container``), and the checks before
queueing accept a checkpoint that only the image holds. Hashing a multi-GB image takes a while,
so the record doubles as a cache: it is trusted while the image's size and mtime match; an image
copied elsewhere is hashed again, and keeps its checkpoint list only when the hash is unchanged
(an image the record does not describe has no known checkpoints). Light on purpose (no spython):
the launcher imports it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import read_json, write_json

__all__ = ["ImageRecord", "record_path", "read_record", "write_record"]

_CHUNK = 8 << 20


@dataclass(frozen=True)
class ImageRecord:
    digest: str  # "sha256:<hex>", as OCI writes digests
    revision: str | None
    checkpoints: tuple[str, ...] | None  # None: not known (the image was not built by `container build`)


def record_path(image: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(image)}.json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _load(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _record(data: dict[str, Any]) -> ImageRecord:
    names = data.get("checkpoints")
    names = tuple(str(n) for n in names) if isinstance(names, list) else None
    return ImageRecord(f"sha256:{data['sha256']}", data.get("revision"), names)


def write_record(image: str | os.PathLike, *, revision: str | None,
                 checkpoints: Sequence[str] | None) -> ImageRecord:
    """Hash ``image`` and write its record (``container build`` calls this after a build)."""
    path = Path(image)
    stat = path.stat()
    data = {"sha256": _sha256(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "revision": revision, "checkpoints": None if checkpoints is None else sorted(checkpoints)}
    write_json(record_path(path), data)
    return _record(data)


def read_record(image: str | os.PathLike | None) -> ImageRecord | None:
    """The record of a local image file (None for registry URIs, sandboxes and missing files).

    Hashes the image when the record is missing or stale, and saves the result where it may.
    """
    path = Path(image) if image and "://" not in os.fspath(image) else None
    if path is None or not path.is_file():
        return None
    stat = path.stat()
    data = _load(record_path(path))
    if data.get("size") == stat.st_size and data.get("mtime_ns") == stat.st_mtime_ns and "sha256" in data:
        return _record(data)
    digest = _sha256(path)
    same = data.get("sha256") == digest  # copied, not changed: what it says about content still holds
    fresh = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
             "revision": data.get("revision") if same else None,
             "checkpoints": data.get("checkpoints") if same else None}
    try:
        write_json(record_path(path), fresh)
    except OSError:  # a read-only image directory: hash again next time
        pass
    return _record(fresh)
