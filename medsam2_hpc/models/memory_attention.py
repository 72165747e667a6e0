"""SAM2's memory cross-attention with its values attended in the memories' own 64 dimensions.

The memories SAM2's slices attend to are 64-wide (``mem_dim``); the cross-attention projects
them to 256 for the values, ``V = X W_v^T + b``, and applies no rotary encoding to them. The
softmax rows sum to one, so ``softmax(S) V = (softmax(S) X) W_v^T + b``: attending in 64 dims
and projecting after computes the same thing with about a third less attention arithmetic
(the value half of the kernel shrinks fourfold), and the projection runs on the queries
(4096 per slice at 1024 px) instead of every memory token (up to 7 x 4096 + pointers).
With dropout on the attention weights the rows of ``dropout(P)`` no longer sum to one: a
column of ones appended to ``X`` carries each row's sum through the same kernel (and the same
dropout mask), and the bias is scaled by it. Installed by swapping the class of Meta's
``RoPEAttention`` modules in place (:func:`use_low_rank_values`): parameters, state-dict keys
and checkpoints stay as they are, and the installed ``sam2`` package is not modified.

In eval, :class:`EvalMemoryAttention` (installed the same way by the propagator) also runs
layer 0's self-attention once for the image features all objects of a slice share, and reads
memories whose keys were projected and rotated once per frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from sam2.modeling.memory_attention import MemoryAttention
from sam2.modeling.position_encoding import apply_rotary_enc
from sam2.modeling.sam.transformer import RoPEAttention
from torch import Tensor

__all__ = ["LowRankValueAttention", "use_low_rank_values", "EvalMemoryAttention", "use_eval_shortcuts"]

_ALIGN = 8  # fused attention kernels want head dims in multiples of 8 (64 + ones column -> 72)


class LowRankValueAttention(RoPEAttention):
    """``RoPEAttention`` whose values are the raw ``kv_in_dim``-wide memories, projected after."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, num_k_exclude_rope: int = 0) -> Tensor:
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        q, k = self._rotate(q, k, num_k_exclude_rope)
        return self._attend(q, k, v)

    def attend_keys(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """:meth:`forward` with the keys given projected and rotated, (B, heads, N_k, head dim)."""
        return self._attend(self.rotated(self._separate_heads(self.q_proj(q), self.num_heads)), k, v)

    def keys(self, x: Tensor, rotate: bool) -> Tensor:
        """(B, N, kv_in_dim) -> projected keys (B, heads, N, head dim), rotated if ``rotate``
        (N must then be the query grid's size, as for one memory frame)."""
        k = self._separate_heads(self.k_proj(x), self.num_heads)
        return self.rotated(k) if rotate else k

    def rotated(self, x: Tensor) -> Tensor:
        """Meta's rotary encoding of (B, heads, N, head dim) ``x`` over the N = h x w grid."""
        self._fit_freqs(x.shape[-2], x.device)
        return apply_rotary_enc(x, x[:, :, :0], freqs_cis=self.freqs_cis)[0]

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        dropout_p = self.dropout_p if self.training else 0.0
        out = self._project_values(_attend_raw(q, k, v, dropout_p, self.v_proj.bias is not None))
        return self.out_proj(self._recombine_heads(out))

    def _fit_freqs(self, n: int, device: torch.device) -> None:
        """Meta's rotary frequencies, on ``device``, for a grid of ``n`` tokens."""
        w = h = math.sqrt(n)
        self.freqs_cis = self.freqs_cis.to(device)
        if self.freqs_cis.shape[0] != n:
            self.freqs_cis = self.compute_cis(end_x=w, end_y=h).to(device)

    def _rotate(self, q: Tensor, k: Tensor, num_k_exclude_rope: int) -> tuple[Tensor, Tensor]:
        """Meta's rotary encoding of queries and (all but the excluded last) keys, unchanged."""
        self._fit_freqs(q.shape[-2], q.device)
        if q.shape[-2] != k.shape[-2] and not self.rope_k_repeat:
            raise ValueError("LowRankValueAttention: keys outnumber queries but rope_k_repeat is off")
        num_k_rope = k.size(-2) - num_k_exclude_rope
        q, k_rot = apply_rotary_enc(q, k[:, :, :num_k_rope], freqs_cis=self.freqs_cis,
                                    repeat_freqs_k=self.rope_k_repeat)
        return q, torch.cat([k_rot, k[:, :, num_k_rope:]], dim=2)

    def _project_values(self, attended: Tensor) -> Tensor:
        """(B, heads, N, c [+ row sums]) attended memories -> (B, heads, N, head dim) values."""
        c = self.kv_in_dim
        weight = self.v_proj.weight.view(self.num_heads, -1, c)  # (heads, head dim, c)
        out = attended[..., :c] @ weight.transpose(1, 2).to(attended.dtype)
        bias = self.v_proj.bias
        if bias is None:
            return out
        bias = bias.view(self.num_heads, 1, -1).to(out.dtype)
        if attended.shape[-1] > c:  # dropout: each row's sum of kept weights scales the bias
            return out + attended[..., c:c + 1] * bias
        return out + bias


def _attend_raw(q: Tensor, k: Tensor, x: Tensor, dropout_p: float, bias: bool) -> Tensor:
    """softmax(q k^T / sqrt(d)) [dropped out] applied to the raw memories ``x`` (B, N_k, c).

    With dropout (and a bias to scale) a ones column rides along, zero-padded to a multiple of
    8 so the fused kernels take it; the result then holds the row sums in column ``c``.
    """
    x = x.unsqueeze(1).to(q.dtype)
    if dropout_p > 0 and bias:
        c = x.shape[-1]
        extra = -(-(c + 1) // _ALIGN) * _ALIGN - c
        pad = torch.zeros(*x.shape[:-1], extra, dtype=x.dtype, device=x.device)
        pad[..., 0] = 1
        x = torch.cat([x, pad], dim=-1)
    x = x.expand(-1, q.shape[1], -1, -1)
    return F.scaled_dot_product_attention(q, k, x, dropout_p=dropout_p)


def use_low_rank_values(model: torch.nn.Module) -> int:
    """Switch the memory attention's cross-attention modules of ``model`` to the rank-64 value path.

    Only modules whose values come in narrower than they are projected to (``kv_in_dim <
    internal_dim``) change, the only case where it saves work. Returns how many changed.
    """
    changed = 0
    for layer in getattr(getattr(model, "memory_attention", None), "layers", []):
        attn = layer.cross_attn_image
        if type(attn) is RoPEAttention and attn.kv_in_dim < attn.internal_dim:
            attn.__class__ = LowRankValueAttention
            changed += 1
    return changed


class EvalMemoryAttention(MemoryAttention):
    """Meta's ``MemoryAttention`` with two shortcuts for eval, where the objects share work.

    The objects of a slice share its image features: the propagator passes them (and their
    positional encoding) expanded over the K objects, a view with batch stride 0. Up to the
    first cross-attention nothing else enters, so layer 0's self-attention (about 3 % of an
    inference slice's FLOPs at 13 organs) computes K identical rows: here it runs on one and is
    expanded. Only in eval (no dropout) and only for such views; anything else is Meta's path.
    :meth:`read` takes the memories' keys from a per-frame cache
    (:class:`~medsam2_hpc.models.memory_read.KeyCache`) instead of projecting and rotating every
    memory frame again at every slice that reads it.
    """

    def forward(self, curr: Tensor | list[Tensor], memory: Tensor,
                curr_pos: Tensor | list[Tensor] | None = None, memory_pos: Tensor | None = None,
                num_obj_ptr_tokens: int = 0) -> Tensor:
        if isinstance(curr, list):
            (curr,), (curr_pos,) = curr, curr_pos  # Meta's forward takes one level, as a list or not
        if self.training or not self.batch_first or not _rows_shared(curr, curr_pos):
            return super().forward(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens)
        memory, memory_pos = memory.transpose(0, 1), memory_pos.transpose(0, 1)

        def cross(layer: torch.nn.Module, tgt: Tensor, query_pos: Tensor) -> Tensor:
            kwargs = _rope_kwargs(layer, num_obj_ptr_tokens)
            return layer._forward_ca(tgt, memory, query_pos, memory_pos, **kwargs)

        return self._run(curr, curr_pos, cross)

    def read(self, curr: Tensor, curr_pos: Tensor, values: Tensor, keys: list[Tensor]) -> Tensor:
        """Eval: (N, K, C) ``curr`` attends to ``values`` (K, N_k, mem_dim), the raw memories, through
        each layer's ``keys[i]`` (K, heads, N_k, head dim), already projected and rotated."""
        if self.training or not self.batch_first:
            raise ValueError("EvalMemoryAttention.read: eval and batch-first only")
        layers = iter(keys)

        def cross(layer: torch.nn.Module, tgt: Tensor, query_pos: Tensor) -> Tensor:
            tgt2 = layer.norm2(tgt)
            q = tgt2 + query_pos if layer.pos_enc_at_cross_attn_queries else tgt2
            return tgt + layer.dropout2(layer.cross_attn_image.attend_keys(q, next(layers), values))

        return self._run(curr, curr_pos, cross)

    def _run(self, curr: Tensor, curr_pos: Tensor,
             cross: Callable[[torch.nn.Module, Tensor, Tensor], Tensor]) -> Tensor:
        """Meta's layers (self-attention, ``cross``-attention, MLP) on (N, K, C) ``curr``, layer 0's
        self-attention on one row when the rows are one expanded (:func:`_rows_shared`)."""
        k = curr.shape[1]
        row, pos = (curr[:, :1], curr_pos[:, :1]) if _rows_shared(curr, curr_pos) else (curr, curr_pos)
        if self.pos_enc_at_input:
            row = row + 0.1 * pos
        output, query_pos = row.transpose(0, 1), curr_pos.transpose(0, 1)
        for i, layer in enumerate(self.layers):
            if i == 0:
                output = layer._forward_sa(output, pos.transpose(0, 1)).expand(k, -1, -1)
            else:
                output = layer._forward_sa(output, query_pos)
            output = cross(layer, output, query_pos)
            tgt2 = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm3(output)))))
            output = output + layer.dropout3(tgt2)
        return self.norm(output).transpose(0, 1)


def _rows_shared(curr: Tensor, curr_pos: Tensor | None) -> bool:
    """Whether ``curr`` and ``curr_pos`` (N, K, C) are one row each expanded over K > 1 objects."""
    return curr_pos is not None and curr.shape[1] > 1 and curr.stride(1) == 0 and curr_pos.stride(1) == 0


def _rope_kwargs(layer: torch.nn.Module, num_obj_ptr_tokens: int) -> dict[str, int]:
    """What Meta's ``MemoryAttention`` passes a layer: the pointer count only to RoPE cross-attention."""
    if isinstance(layer.cross_attn_image, RoPEAttention):
        return {"num_k_exclude_rope": num_obj_ptr_tokens}
    return {}


def use_eval_shortcuts(model: torch.nn.Module) -> bool:
    """Swap the class of ``model.memory_attention`` to :class:`EvalMemoryAttention` (same
    parameters and state-dict keys; Meta's package is not modified). Returns whether it changed."""
    attention = getattr(model, "memory_attention", None)
    if type(attention) is not MemoryAttention:
        return False
    attention.__class__ = EvalMemoryAttention
    return True
