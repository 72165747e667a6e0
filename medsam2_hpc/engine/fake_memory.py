"""Activation memory of a GPU training step, counted on a machine without a GPU.

The 3D trainer's memory budget (24 GiB at 1024 px, 13 organs, 8-slice clips) decides which
recompute it can use, and neither that size nor a GPU fits the machines the tests run on. A
forward pass on *fake* tensors (``FakeTensorMode``: shapes, dtypes and devices, no data) runs
the same Python at any size in seconds: every op's output storage is noted (a weak reference),
and what is still alive after the forward, with only the loss kept, is what the autograd graph
holds for the backward pass: tensors saved by its nodes, a checkpoint's saved inputs, a selective
checkpoint's cached outputs and the memories later slices read.

The tensors are fake *CUDA* tensors, so CUDA's autocast op lists apply (layer norms in fp32,
matmuls in bf16), and :func:`fake_cuda` routes attention to the fused cuDNN kernel and dropout to
``native_dropout``, which is what SAM2's shapes take on an H100/H200: the kernel saves its output
and log-sum-exp, not the attention matrix, and is tagged as drawing random numbers (a selective
recompute keeps it). Not counted: transient peaks (a slice's recompute in backward, the frozen
encoder's activations while it runs), the allocator's fragmentation, cuDNN workspaces.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["fake_cuda", "to_fake", "held_bytes"]

DEVICE = torch.device("cuda")


def _fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                     dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                     enable_gqa: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` as cuDNN's fused kernel runs it (autocast's dtype)."""
    if torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        q, k, v = (x.to(dtype) for x in (q, k, v))
    return torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, attn_mask, True, dropout_p, is_causal,
                                                              False, scale=scale)[0]


def _fused_dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
                   ) -> torch.Tensor:
    """Dropout as CUDA runs it (``native_dropout``: a bool mask; the CPU's keeps a mask of x's dtype)."""
    return torch.native_dropout(x, p, training)[0] if training and p > 0 else x


@contextlib.contextmanager
def fake_cuda() -> Iterator[FakeTensorMode]:
    """Fake tensors that say they live on a GPU, with CUDA autocast and fused attention/dropout.

    CUDA reports itself available inside (autocast refuses "cuda" otherwise); every tensor an op
    meets must be fake (:func:`to_fake`), so nothing reaches a real device.
    """
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    with mode, mock.patch("torch.cuda.is_available", return_value=True), \
            mock.patch("torch.cuda.is_bf16_supported", return_value=True), \
            mock.patch.object(F, "scaled_dot_product_attention", _fused_attention), \
            mock.patch.object(F, "dropout", _fused_dropout):
        yield mode


def to_fake(value: Any, mode: FakeTensorMode, device: torch.device | None = DEVICE) -> Any:
    """A fake copy of a tensor on ``device`` (None: where it is); a module's parameters, buffers and
    tensor attributes (RoPE tables) replaced by fake ones in place, ``requires_grad`` kept."""
    if isinstance(value, torch.Tensor):
        fake = mode.from_tensor(value)
        return fake if device is None else fake.to(device)
    if value is None:
        return None
    for module in value.modules():
        for name, p in module._parameters.items():
            if p is not None:
                module._parameters[name] = torch.nn.Parameter(to_fake(p, mode, device),
                                                              requires_grad=p.requires_grad)
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = to_fake(b, mode, device)
        for name, attr in list(vars(module).items()):
            if isinstance(attr, torch.Tensor):
                setattr(module, name, to_fake(attr, mode, device))
    return value


class _Storages(TorchDispatchMode):
    """Weak references to the storages ops allocate for their outputs, by storage."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, tuple[StorageWeakRef, int]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        # views and in-place results share an input's storage: it was made before (or is noted)
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in inputs:
                storage = t.untyped_storage()
                self.refs.setdefault(storage._cdata, (StorageWeakRef(storage), storage.nbytes()))
        return out

    def alive(self) -> int:
        return sum(n for ref, n in self.refs.values() if not ref.expired())


def held_bytes(forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of the storages ``forward`` made that are alive once it returned its loss (kept)."""
    with _Storages() as storages:
        loss = forward()
        gc.collect()
        held = storages.alive()
    del loss
    return held
