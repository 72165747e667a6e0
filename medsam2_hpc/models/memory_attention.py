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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from sam2.modeling.position_encoding import apply_rotary_enc
from sam2.modeling.sam.transformer import RoPEAttention
from torch import Tensor

__all__ = ["LowRankValueAttention", "use_low_rank_values"]

_ALIGN = 8  # fused attention kernels want head dims in multiples of 8 (64 + ones column -> 72)


class LowRankValueAttention(RoPEAttention):
    """``RoPEAttention`` whose values are the raw ``kv_in_dim``-wide memories, projected after."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, num_k_exclude_rope: int = 0) -> Tensor:
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        q, k = self._rotate(q, k, num_k_exclude_rope)
        dropout_p = self.dropout_p if self.training else 0.0
        out = self._project_values(_attend_raw(q, k, v, dropout_p, self.v_proj.bias is not None))
        return self.out_proj(self._recombine_heads(out))

    def _rotate(self, q: Tensor, k: Tensor, num_k_exclude_rope: int) -> tuple[Tensor, Tensor]:
        """Meta's rotary encoding of queries and (all but the excluded last) keys, unchanged."""
        w = h = math.sqrt(q.shape[-2])
        self.freqs_cis = self.freqs_cis.to(q.device)
        if self.freqs_cis.shape[0] != q.shape[-2]:
            self.freqs_cis = self.compute_cis(end_x=w, end_y=h).to(q.device)
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
