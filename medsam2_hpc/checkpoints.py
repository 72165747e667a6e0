"""Where Meta's SAM2 checkpoints are found: one search order for every front end.

1. an explicit path (``hparams.sam_ckpt`` in jobs.yaml, resolved against the jobs file's
   directory; ``-sam_ckpt`` on a command line, against the working directory);
2. ``$MEDSAM2_CHECKPOINTS`` (the launcher passes it into the image and binds it read-only);
3. the image's baked directory, :data:`BAKED_DIR` (``container build --with-checkpoints``);
4. this checkout's ``checkpoints/``, where ``checkpoints/download_ckpts.sh`` saves them.

No step depends on the working directory, so a job finds what the submitting shell found.
On the login node the image's baked directory does not exist: ``submit`` checks inside
:func:`image_holds` with the file names the image's build recorded (hpc/image.py), so a
checkpoint baked into the image passes step 3 there, and one the image lacks still fails.
Light on purpose (no torch): the launcher and the container commands import it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from .errors import InputError

__all__ = ["ENV_VAR", "BAKED_DIR", "CHECKOUT_DIR", "search_dirs", "find_checkpoint", "image_holds",
           "only_in_image"]

ENV_VAR = "MEDSAM2_CHECKPOINTS"
BAKED_DIR = Path("/opt/medsam2-hpc/checkpoints")
CHECKOUT_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
# The file names baked into the image the jobs will run (None: no image, or not known).
_IN_IMAGE: ContextVar[frozenset[str] | None] = ContextVar("medsam2_image_checkpoints", default=None)


@contextmanager
def image_holds(names: Iterable[str] | None) -> Iterator[None]:
    """Within this block, :data:`BAKED_DIR` holds ``names`` (in the image, not on this host)."""
    token = _IN_IMAGE.set(None if names is None else frozenset(names))
    try:
        yield
    finally:
        _IN_IMAGE.reset(token)


def only_in_image(path: str | os.PathLike) -> bool:
    """True for a baked checkpoint that the image holds and this host does not (a login node):
    checks then trust the image's record instead of loading the file."""
    path = Path(path)
    names = _IN_IMAGE.get() or frozenset()
    return path.parent == BAKED_DIR and path.name in names and not path.is_file()


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
        if (directory / file_name).is_file() or only_in_image(directory / file_name):
            return directory / file_name
    baked = _IN_IMAGE.get()
    image = "" if baked is None else f" (the image holds {', '.join(sorted(baked)) or 'no checkpoints'})"
    raise InputError(f"hparams.sam_ckpt: no {file_name} in {', '.join(map(str, dirs))}{image}; set sam_ckpt "
                     f"(or -sam_ckpt), export {ENV_VAR}=<dir>, bake it (container build --with-checkpoints), "
                     "or run checkpoints/download_ckpts.sh (sam_ckpt: none trains from random weights)")
