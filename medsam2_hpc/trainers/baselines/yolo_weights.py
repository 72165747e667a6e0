"""YOLO checkpoints are read with ``torch.load(weights_only=True)``, never unpickled in full.

Ultralytics' ``.pt`` files pickle the model object itself, and its default loader unpickles
them in full, so a crafted ``__reduce__`` in a ``weights=`` file, or in a run directory's
``last.pt``/``best.pt``, would run. Two layers stop that:

* :func:`check_yolo_checkpoint` (trainer ``check``, before anything is written) runs torch's
  restricted unpickler over the file with every class it names bound to an inert stand-in, so
  the file is refused unless it is built only from model classes (``torch.nn``, ``ultralytics``)
  and tensors. No Ultralytics code is imported or run for it.
* :func:`safe_load_switch` turns on Ultralytics' own ``ULTRALYTICS_SAFE_LOAD`` mode before it
  loads anything, so its loads are ``weights_only=True`` against its allow-list too. Our own
  YOLO checkpoints (Ultralytics' format) load this way.
"""

from __future__ import annotations

import os
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

from medsam2_hpc.errors import InputError

__all__ = ["check_yolo_checkpoint", "safe_load_switch"]

# What a model checkpoint may name besides torch's own weights-only globals.
_MODEL_MODULES = ("torch.nn.modules.", "ultralytics.nn.", "ultralytics.utils.", "ultralytics.yolo.utils.")
_DATA_GLOBALS = {"numpy.dtype", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
                 "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib._local.PosixPath",
                 "pathlib._local.WindowsPath", "builtins.getattr"}


class _Inert:
    """Stands in for every class a checkpoint names: built and filled, it does nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _inert_getattr(obj: Any, name: str) -> Any:
    """Checkpoints reach ``Detect.forward`` or an enum member through getattr; nothing else."""
    if (obj is _Inert or isinstance(obj, _Inert)) and not name.startswith("_"):
        return _Inert()
    raise pickle.UnpicklingError(f"getattr(..., {name!r}) is not a model attribute")


def _allowed(name: str) -> bool:
    return name.startswith(_MODEL_MODULES) or name.startswith("numpy.dtypes.") or name in _DATA_GLOBALS


def check_yolo_checkpoint(path: str | os.PathLike, what: str) -> None:
    """Refuse ``path`` (InputError, one line) unless it is a complete weights-only model checkpoint."""
    import torch  # here, not at import: the trainer's check is torch-free unless there is a file to read

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path}: no such file")
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{what} {path}: not a complete PyTorch checkpoint ({type(exc).__name__})") from None
    refused = [n for n in names if not _allowed(n)]
    if refused:
        raise InputError(f"{what} {path}: refers to {refused[0]}, which a model checkpoint never needs; "
                         "it is not loaded")
    stand_ins = [(_inert_getattr if n == "builtins.getattr" else _Inert, n) for n in names]
    try:
        with torch.serialization.safe_globals(stand_ins):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or refused files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(f"{what} {path}: cannot be read as weights only ({first})") from None
    if not isinstance(data, dict) or not ({"model", "ema"} & set(data)):
        raise InputError(f"{what} {path}: not an Ultralytics checkpoint (no model in it)")


def safe_load_switch() -> None:
    """Ultralytics' weights-only loading, on before it loads anything (the variable is read at import)."""
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
    tasks = sys.modules.get("ultralytics.nn.tasks")
    if tasks is not None:  # imported earlier in this process: flip the flag it read
        tasks.SAFE_LOAD = True
