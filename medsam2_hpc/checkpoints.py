"""Where Meta's SAM2 checkpoints are found: one search order for every front end.

1. an explicit path (``hparams.sam_ckpt`` in jobs.yaml, resolved against the jobs file's
   directory; ``-sam_ckpt`` on a command line, against the working directory);
2. ``$MEDSAM2_CHECKPOINTS`` (the launcher passes it into the image and binds it read-only);
3. the image's baked directory, :data:`BAKED_DIR` (``container build --with-checkpoints``);
4. this checkout's ``checkpoints/``, where ``checkpoints/download_ckpts.sh`` saves them.

No step depends on the working directory, so a job finds what the submitting shell found.
Light on purpose (no torch): the launcher and the container commands import it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError

__all__ = ["ENV_VAR", "BAKED_DIR", "CHECKOUT_DIR", "search_dirs", "find_checkpoint"]

ENV_VAR = "MEDSAM2_CHECKPOINTS"
BAKED_DIR = Path("/opt/medsam2-hpc/checkpoints")
CHECKOUT_DIR = Path(__file__).resolve().parents[1] / "checkpoints"


def search_dirs() -> list[Path]:
    """Steps 2-4 of the search order, in order (an unset variable is skipped)."""
    dirs = [Path(os.environ[ENV_VAR])] if os.environ.get(ENV_VAR) else []
    return [*dirs, BAKED_DIR, CHECKOUT_DIR]


def find_checkpoint(file_name: str) -> Path:
    """The first ``<dir>/<file_name>`` of :func:`search_dirs` that is a file.

    Raises:
        InputError: naming every place looked at and the ways to provide the file.
    """
    dirs = search_dirs()
    for directory in dirs:
        if (directory / file_name).is_file():
            return directory / file_name
    raise InputError(f"hparams.sam_ckpt: no {file_name} in {', '.join(map(str, dirs))}; set sam_ckpt "
                     f"(or -sam_ckpt), export {ENV_VAR}=<dir>, or run checkpoints/download_ckpts.sh "
                     "(sam_ckpt: none trains from random weights)")
