"""Checkpoints: atomic saves, ``weights_only=True`` loads, full resume state.

A checkpoint holds model, optimizer, scheduler, scaler, epoch, best Dice and every RNG
state, so a requeued job continues as if it had not stopped. Only tensors and plain
Python containers are stored, which is what ``torch.load(weights_only=True)`` accepts.
torch is imported where a checkpoint is built or read: :func:`check_resumable` runs in the
trainers' checks, thousands of times in ``submit``, mostly for runs that have no checkpoint yet.
"""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from ..errors import InputError

__all__ = ["save_checkpoint", "load_checkpoint", "check_resumable", "rng_state", "set_rng_state", "link_into"]


def rng_state() -> dict[str, Any]:
    import torch

    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(obj: Any) -> Any:
    return tuple(_as_tuple(o) for o in obj) if isinstance(obj, (list, tuple)) else obj


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically (temp + rename): a kill mid-save keeps the old file."""
    import torch

    return atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | os.PathLike, *, what: str = "checkpoint") -> dict[str, Any]:
    """Load with ``weights_only=True``; unreadable files become one-line InputErrors."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path}: no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{what} {path}: cannot be read ({first})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{what} {path}: expected a dict of tensors, got {type(data).__name__}")
    return data


def check_resumable(run: Any) -> None:
    """A run's last.pt/best.pt, if present, is complete and names nothing but tensors (the header and
    the pickle's globals, not the weights): checked before a resumed run touches its status.json."""
    if not run.checkpoints.is_dir():  # a new run, as most of a sweep's are when it is submitted
        return
    for path in (run.last_ckpt, run.best_ckpt):
        if not path.exists():
            continue
        import torch

        try:
            with zipfile.ZipFile(path) as archive:
                archive.namelist()
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except (zipfile.BadZipFile, OSError, ValueError, RuntimeError) as exc:
            raise InputError(f"resume checkpoint {path}: not a complete checkpoint ({type(exc).__name__}); "
                             "delete it to start the run again") from None
        if names:
            raise InputError(f"resume checkpoint {path}: refers to {names[0]}, which our checkpoints never "
                             "hold; it is not loaded")


def link_into(src: Path, dst: Path) -> None:
    """Expose ``src`` at ``dst`` (the Medical-SAM2-compatible ``Model/*.pth`` view) without a second copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dst)
