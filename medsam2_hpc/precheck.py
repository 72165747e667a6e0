"""Trainer checks shared across the tasks of a study while it is checked before queueing.

``submit`` runs every task's ``check`` (thousands in a sweep); the expensive parts (scanning a
dataset, building SAM2 against its checkpoint) depend on a few inputs, not on the task. Inside
:func:`shared_checks`, :func:`once` runs each distinct check once and replays its result, or
its InputError, for the other tasks. Outside it (a job checking its one task) nothing is kept,
so a dataset fixed between two calls is seen fixed.

The block also means "on the submitting host": what only the compute node can answer (is a
GPU visible?) is left to the job's own check there.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from .errors import InputError

__all__ = ["shared_checks", "once", "before_queue"]

T = TypeVar("T")
_MEMO: ContextVar[dict[Hashable, tuple[bool, Any]] | None] = ContextVar("medsam2_precheck", default=None)


@contextmanager
def shared_checks() -> Iterator[None]:
    """Within this block, :func:`once` remembers each check's outcome by its key."""
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def once(key: Hashable, check: Callable[[], T]) -> T:
    """``check()``, or its remembered result/InputError when ``key`` was checked in this block."""
    memo = _MEMO.get()
    if memo is None:
        return check()
    if key not in memo:
        try:
            memo[key] = (True, check())
        except InputError as exc:
            memo[key] = (False, exc)
    ok, value = memo[key]
    if not ok:
        raise InputError(str(value))
    return value


def before_queue() -> bool:
    """True inside :func:`shared_checks`: checking on the submitting host, not in the job."""
    return _MEMO.get() is not None
