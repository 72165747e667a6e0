"""Constant tensors of a model's glue (index rows, empty prompts, fill values), made once per shape.

Each would otherwise be a host op (and on a GPU an upload) at every slice. They are kept on the
model they serve, not in a module-level table: a tensor belongs to its model's run (under fake
tensors, to that run's fake mode), and another model's run must not be handed it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
from torch import Tensor

__all__ = ["cached_constant"]

_MAX_ENTRIES = 64  # shapes and patterns a model's runs use: a handful; a bound in case they keep changing


def cached_constant(model: torch.nn.Module, key: Hashable, make: Callable[[], Tensor | tuple[Tensor, ...]]
                    ) -> Tensor | tuple[Tensor, ...]:
    """``make()``'s tensors (no gradient, never written to), made once per ``key`` for ``model``."""
    cache = model.__dict__.setdefault("_cached_constants", {})
    if key not in cache:
        if len(cache) >= _MAX_ENTRIES:
            cache.clear()
        with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable by autograd later
            cache[key] = make()
    return cache[key]
