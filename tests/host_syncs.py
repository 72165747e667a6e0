"""HostSyncDetector: the calls that would make the host wait for a GPU, caught on a CPU-only run.

A host sync cannot be timed here (there is no GPU), but each one goes through a call that can be
seen: a scalar read (``.item()``, ``bool(t)``, ``int(t)``: ``aten._local_scalar_dense``), a
result whose size depends on the data (``nonzero``, ``unique``, ``masked_select``, indexing with
a boolean mask), a copy to the host (``.cpu()``, ``.numpy()``, ``.tolist()``), or a blocking copy
of host data to the device (``torch.tensor(..., device=d)``). The detector records each, with the
line of our code (or of ``sam2``) that made it. On the CPU every tensor is a host tensor, so code
under watch must keep its host-side planning out of the watched region.
"""

from __future__ import annotations

import traceback
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
_DATA_DEPENDENT = {_aten._local_scalar_dense, _aten.nonzero, _aten._unique2, _aten.unique_dim,
                   _aten.unique_consecutive, _aten.masked_select, _aten.nonzero_static}
_INDEXING = {_aten.index, _aten.index_put, _aten.index_put_}
_TO_HOST = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.item}
_UPLOADS = {torch.tensor, torch.as_tensor}


def _site() -> str:
    """The innermost frame in our package or in sam2 (where to fix it)."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        if "medsam2_hpc" in frame.filename or "/sam2/" in frame.filename:
            return f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} {frame.line}"
    return "?"


class _Dispatch(TorchDispatchMode):
    def __init__(self, events: list[tuple[str, str]]) -> None:
        super().__init__()
        self.events = events

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        packet = func.overloadpacket
        boolean_index = packet in _INDEXING and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or []))
        if packet in _DATA_DEPENDENT or boolean_index:
            self.events.append((str(func), _site()))
        return func(*args, **(kwargs or {}))


class _Functions(TorchFunctionMode):
    def __init__(self, events: list[tuple[str, str]]) -> None:
        super().__init__()
        self.events = events

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _TO_HOST or (func in _UPLOADS and kwargs.get("device") is not None):
            self.events.append((func.__name__, _site()))
        return func(*args, **kwargs)


class HostSyncDetector:
    """``with HostSyncDetector() as syncs: ...``; then ``syncs.events``: (call, site) pairs."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self._modes = (_Functions(self.events), _Dispatch(self.events))

    def __enter__(self) -> HostSyncDetector:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
