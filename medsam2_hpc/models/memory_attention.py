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

__all__ = ["LowRankValueAttention", "use_low_rank_values", "EvalMemoryAttention", "use_eval_shortcuts",
           "TrainMemoryAttention", "use_fused_training"]

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

        return self._run(curr[:, :1], curr_pos[:, :1], curr.shape[1], cross)

    def read(self, rows: Tensor, pos: Tensor, k: int, values: Tensor, keys: list[Tensor]) -> Tensor:
        """Eval: the image features of G slices, ``rows`` (N, G, C) with their positional encoding
        ``pos`` (N, 1, C), each for k objects, attend to ``values`` (G k, N_k, mem_dim), the raw
        memories, through each layer's ``keys[i]`` (G k, heads, N_k, head dim), already projected
        and rotated. Returns (N, G k, C), the slices' objects one after another."""
        if self.training or not self.batch_first:
            raise ValueError("EvalMemoryAttention.read: eval and batch-first only")
        layers = iter(keys)

        def cross(layer: torch.nn.Module, tgt: Tensor, query_pos: Tensor) -> Tensor:
            tgt2 = layer.norm2(tgt)
            q = tgt2 + query_pos if layer.pos_enc_at_cross_attn_queries else tgt2
            return tgt + layer.dropout2(layer.cross_attn_image.attend_keys(q, next(layers), values))

        return self._run(rows, pos, k, cross)

    def _run(self, rows: Tensor, pos: Tensor, k: int,
             cross: Callable[[torch.nn.Module, Tensor, Tensor], Tensor]) -> Tensor:
        """Meta's layers (self-attention, ``cross``-attention, MLP) for k objects on each of the G
        slices ``rows`` (N, G, C): layer 0's self-attention once per slice, then over (G k) rows."""
        g = rows.shape[1]
        if self.pos_enc_at_input:
            rows = rows + 0.1 * pos
        pos = pos.transpose(0, 1)
        query_pos = pos.expand(g * k, -1, -1)
        for i, layer in enumerate(self.layers):
            if i == 0:
                output = layer._forward_sa(rows.transpose(0, 1), pos)
                output = output[:, None].expand(-1, k, -1, -1).flatten(0, 1)
            else:
                output = layer._forward_sa(output, query_pos)
            output = cross(layer, output, query_pos)
            tgt2 = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm3(output)))))
            output = output + layer.dropout3(tgt2)
        return self.norm(output).transpose(0, 1)


def _rows_shared(curr: Tensor, curr_pos: Tensor | None) -> bool:
    """Whether ``curr`` and ``curr_pos`` (N, K, C) are one row each expanded over K objects."""
    return curr_pos is not None and (curr.shape[1] == 1 or (curr.stride(1) == 0 and curr_pos.stride(1) == 0))


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


class TrainMemoryAttention(EvalMemoryAttention):
    """:class:`EvalMemoryAttention` with a training path that issues far fewer host ops.

    Meta's layers cost about 690 aten ops forward and 990 backward per slice (Hiera-T, CPU), and the
    selective recompute runs the forward again: the training step is host-bound. This path computes
    the same thing (same parameters, same dropout draws in the same order) with:

    - activations as 2-D (B N, C) rows between the attentions, so each linear is ``t`` + ``addmm``;
    - one q/k/v projection for the self-attention (weights concatenated at call time; q = k = v =
      ``norm1`` output, as SAM2's configs have no positional encoding there);
    - every layer's memory keys projected in one ``baddbmm`` and rotated in one call (the memories
      and their encoding are the same in all layers), the raw rank-64 values built once;
    - real-valued RoPE (cos/sin tables cached per grid, memory count and pointer count; pairs
      interleaved as in Meta's ``view_as_complex``; fp32, then cast back as Meta's), queries and
      keys of the self-attention rotated in one call;
    - the value and output projections of the cross-attention folded into one (C, 72) matrix,
      applied once to the attended raw memories (and their row sums, which scale the bias).

    Installed by :func:`use_fused_training` where every layer fits (:func:`_fits`); eval keeps the
    shortcuts of :class:`EvalMemoryAttention`.
    """

    def forward(self, curr: Tensor | list[Tensor], memory: Tensor,
                curr_pos: Tensor | list[Tensor] | None = None, memory_pos: Tensor | None = None,
                num_obj_ptr_tokens: int = 0) -> Tensor:
        if not self.training:
            return super().forward(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens)
        if isinstance(curr, list):
            (curr,), (curr_pos,) = curr, curr_pos
        n, b, c = curr.shape
        x = torch.add(curr, curr_pos, alpha=0.1) if self.pos_enc_at_input and curr_pos is not None else curr
        x = x.transpose(0, 1).reshape(b * n, c)  # batch-major rows: attention wants (B, N, C)
        composed = memory.device.type == "cpu" and self._drops_attention()
        scale = c ** -0.5 if composed else 1.0  # composed attention: queries pre-scaled by their tables
        qkv_rope = self._tables("qkv", n, device=memory.device, scale=scale)
        q_rope = self._tables("q", n, device=memory.device, scale=scale)
        keys = self._keys(memory, memory_pos, num_obj_ptr_tokens, n, composed)
        values = _raw_values(memory, keys[0].dtype, composed)
        folded = self._folded_projections(values.shape[-1])
        for layer, layer_keys, layer_folded in zip(self.layers, keys, folded, strict=True):
            x = _self_attention(layer, x, b, *qkv_rope, composed)
            x = _cross_attention(layer, x, b, *q_rope, layer_keys, values, layer_folded)
            hidden = _drop(layer.dropout, layer.activation(layer.linear1(layer.norm3(x))))
            x = x + _drop(layer.dropout3, layer.linear2(hidden))
        return self.norm(x).view(b, n, c).transpose(0, 1)

    def _drops_attention(self) -> bool:
        """Whether any attention drops out its weights (training with ``dropout_p > 0``)."""
        return any(attn.training and attn.dropout_p > 0
                   for layer in self.layers for attn in (layer.self_attn, layer.cross_attn_image))

    def _folded_projections(self, width: int) -> tuple[Tensor, ...]:
        """Every layer's cross-attention value and output projections as one (C, ``width``) matrix,
        W_o [W_v | b_v] zero-padded to the values' width: one batched product for all layers."""
        attns = [layer.cross_attn_image for layer in self.layers]
        value = torch.cat([torch.stack([a.v_proj.weight for a in attns]),
                           torch.stack([a.v_proj.bias for a in attns]).unsqueeze(2)], dim=2)  # L, C, c_mem+1
        folded = torch.bmm(torch.stack([a.out_proj.weight for a in attns]), value)
        return F.pad(folded, (0, width - value.shape[2])).unbind(0)

    def _keys(self, memory: Tensor, memory_pos: Tensor, n_ptrs: int, n: int, composed: bool
              ) -> tuple[Tensor, ...]:
        """Every layer's rotated keys, (B, 1, N_k, C) each for SDPA, (B, C, N_k) for the ``composed``
        attention (:func:`_attention`): one projection, one rotation."""
        nk, b, c_mem = memory.shape
        if (nk - n_ptrs) % n:
            raise ValueError(f"TrainMemoryAttention: {nk - n_ptrs} memory tokens, not whole frames of {n}")
        x = memory + memory_pos if self.layers[0].pos_enc_at_cross_attn_keys else memory
        x = x.transpose(0, 1).reshape(1, b * nk, c_mem)
        proj = [layer.cross_attn_image.k_proj for layer in self.layers]
        weight = torch.stack([p.weight for p in proj])  # (layers, C, c_mem)
        bias = torch.stack([p.bias for p in proj]).unsqueeze(1)
        keys = torch.baddbmm(bias, x.expand(len(proj), -1, -1), weight.transpose(1, 2))
        cos, sin = self._tables("keys", n, (nk - n_ptrs) // n, n_ptrs, memory.device)
        keys = _rotate(keys.view(len(proj), b, nk, -1, 2), cos, sin).flatten(-2)
        return (keys.transpose(2, 3) if composed else keys.unsqueeze(2)).unbind(0)

    def _tables(self, kind: str, n: int, repeats: int = 0, n_ptrs: int = 0,
                device: torch.device | None = None, scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """RoPE's cos and signed sin, fp32, in pairs (:func:`_rotate`), for a grid of ``n`` tokens: ``q``
        (n, C/2, 2); ``qkv`` (n, 3, C/2, 2), the self-attention's q, k and v side by side, v unrotated;
        ``keys`` (repeats n + n_ptrs, C/2, 2), the grid repeated, then the unrotated pointer tokens.
        The queries' tables times ``scale``.
        Cached, except while ``torch.compile`` traces (the tables are then part of the graph)."""
        if torch.compiler.is_compiling():
            return self._make_tables(kind, n, repeats, n_ptrs, device, scale)
        key = (kind, n, repeats, n_ptrs, device, scale)
        cache = self.__dict__.setdefault("_rope_tables", {})
        if key not in cache:
            if len(cache) >= _MAX_TABLES:
                cache.clear()
            cache[key] = self._make_tables(kind, n, repeats, n_ptrs, device, scale)
        return cache[key]

    def _make_tables(self, kind: str, n: int, repeats: int, n_ptrs: int, device: torch.device | None,
                     scale: float) -> tuple[Tensor, Tensor]:
        rope = self.layers[0].self_attn.compute_cis.keywords  # alike in every attention (_fits)
        cos, sin = _rope_tables(rope["dim"], rope["theta"], n, device)
        if kind == "keys":
            return (torch.cat([cos.repeat(repeats, 1, 1), cos.new_ones(n_ptrs, *cos.shape[1:])]),
                    torch.cat([sin.repeat(repeats, 1, 1), sin.new_zeros(n_ptrs, *sin.shape[1:])]))
        if kind == "qkv":
            return (torch.stack([cos * scale, cos, torch.ones_like(cos)], dim=1),
                    torch.stack([sin * scale, sin, torch.zeros_like(sin)], dim=1))
        return cos * scale, sin * scale


_MAX_TABLES = 64  # (grid, memory count, pointer count, device) entries: a clip uses a handful


def _rope_tables(dim: int, theta: float, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Meta's ``compute_axial_cis`` for a square grid of ``n`` tokens as real tables (n, dim / 2, 2):
    cos of each pair's angle in both its places, and sin negated in the first (see :func:`_rotate`)."""
    side = math.sqrt(n)  # as Meta's RoPEAttention (a float: no graph break under torch.compile)
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4, device=device)[: dim // 4].float() / dim))
    t = torch.arange(n, dtype=torch.float32, device=device)  # made where used: no upload to wait for
    angles = torch.cat([torch.outer(t % side, freqs), torch.outer(torch.div(t, side, rounding_mode="floor"),
                                                                   freqs)], dim=-1)  # (n, dim / 2)
    cos = angles.cos().unsqueeze(-1).repeat(1, 1, 2)
    sin = torch.stack([-angles.sin(), angles.sin()], dim=-1)
    return cos, sin


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Meta's rotary encoding of ``x`` (..., C/2, 2), its C channels' pairs (2j, 2j+1) as complex
    numbers, in real arithmetic: x * cos + swap(x) * sin, where swap exchanges each pair. fp32, then
    x's dtype. Pair-shaped in and out: the callers' own views make and undo the pairs."""
    xf = x.float()
    return torch.addcmul(xf * cos, xf.flip(-1), sin).to(x.dtype)


def _raw_values(memory: Tensor, dtype: torch.dtype, composed: bool) -> Tensor:
    """(N_k, B, c_mem) memories -> (B, 1, N_k, c_mem + pad) values of the rank-64 path ((B, N_k,
    c_mem + pad) for the ``composed`` attention), with ones in the pad: each attended row then holds
    its weights' sum there (it scales the bias)."""
    c_mem = memory.shape[-1]
    extra = -(-(c_mem + 1) // _ALIGN) * _ALIGN - c_mem
    values = F.pad(memory, (0, extra), value=1.0).to(dtype).transpose(0, 1)
    return values if composed else values.unsqueeze(1)


def _drop(module: torch.nn.Dropout, x: Tensor) -> Tensor:
    """``module(x)`` (an ``nn.Dropout``) as one op on every device (:func:`_dropout`)."""
    return _dropout(x, module.p if module.training else 0.0)


def _dropout(x: Tensor, p: float) -> Tensor:
    """Training-mode ``F.dropout(x, p)`` as one op, ``native_dropout``: on a GPU what ``F.dropout`` runs;
    on the CPU the same mask (``bernoulli_(1 - p)`` over an x-shaped tensor) where ``F.dropout`` issues
    four ops. Tagged seeded and not in place, it is kept by the selective recompute on every device."""
    if 0 < p < 1:
        return torch.native_dropout(x, p, True)[0]
    return F.dropout(x, p) if p else x  # p = 1: zeros, as F.dropout


def _attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float) -> Tensor:
    """One head's attention: SDPA for (B, 1, N, d) ``q``, ``k`` and ``v``; composed for (B, N, d)
    queries scaled by 1 / sqrt(d) beforehand (their RoPE tables), keys transposed (B, d, N_k).

    The composed form is for the CPU with dropout, where SDPA takes its unfused math path: about 20
    ops, its dropout four of them (:func:`_dropout`). This is the same product, softmax and one
    ``native_dropout`` over the same (B, N, N_k) weights, so the same seed draws the same mask.
    """
    if q.dim() == 4:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    return torch.bmm(_dropout(torch.softmax(torch.bmm(q, k), dim=-1), dropout_p), v)


def _self_attention(layer: torch.nn.Module, x: Tensor, b: int, cos: Tensor, sin: Tensor, composed: bool
                    ) -> Tensor:
    """Meta's ``_forward_sa`` on rows x (B N, C), one head: fused q/k/v, rotated in one call;
    ``composed``: with :func:`_attention`'s composed form (the tables then scale q)."""
    attn = layer.self_attn
    weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
    heads = () if composed else (1,)
    qkv = F.linear(layer.norm1(x), weight, bias).view(b, *heads, -1, 3, x.shape[1] // 2, 2)
    q, k, v = _rotate(qkv, cos, sin).flatten(-2).unbind(-2)  # v too (by the identity): no slices
    out = _attention(q, k.transpose(1, 2) if composed else k, v, attn.dropout_p if layer.training else 0.0)
    return x + _drop(layer.dropout1, attn.out_proj(out.reshape(x.shape)))


def _cross_attention(layer: torch.nn.Module, x: Tensor, b: int, cos: Tensor, sin: Tensor, keys: Tensor,
                     values: Tensor, folded: Tensor) -> Tensor:
    """Meta's ``_forward_ca`` on rows x (B N, C) with the layer's rotated ``keys`` and the raw
    ``values`` (laid out for :func:`_attention`'s form): attend in the memories' width, then one
    matrix, ``folded`` (:meth:`TrainMemoryAttention._folded_projections`), does value and output
    projection."""
    attn = layer.cross_attn_image
    q = attn.q_proj(layer.norm2(x)).view(*values.shape[:-2], -1, x.shape[1] // 2, 2)
    q = _rotate(q, cos, sin).flatten(-2)
    out = _attention(q, keys, values, attn.dropout_p if layer.training else 0.0)
    return x + _drop(layer.dropout2, F.linear(out.view(-1, folded.shape[1]), folded, attn.out_proj.bias))


def _fits(attention: torch.nn.Module) -> bool:
    """Whether :class:`TrainMemoryAttention` computes what Meta's layers do for ``attention``: SAM2's
    configs (one head, RoPE alike in all attentions, no positional encoding on the self-attention or
    cross-attention queries, biases everywhere, the rank-64 value path on the cross-attention)."""
    layers = list(getattr(attention, "layers", []))
    if not layers or not attention.batch_first:
        return False
    ropes = set()
    for layer in layers:
        sa, ca = layer.self_attn, layer.cross_attn_image
        if type(sa) is not RoPEAttention or type(ca) is not LowRankValueAttention or sa.rope_k_repeat:
            return False
        if layer.pos_enc_at_attn or layer.pos_enc_at_cross_attn_queries \
                or layer.pos_enc_at_cross_attn_keys != layers[0].pos_enc_at_cross_attn_keys:
            return False
        if sa.num_heads != 1 or ca.num_heads != 1 or sa.internal_dim != sa.embedding_dim \
                or ca.internal_dim != ca.embedding_dim:
            return False
        linears = [sa.q_proj, sa.k_proj, sa.v_proj, sa.out_proj, ca.q_proj, ca.k_proj, ca.v_proj, ca.out_proj]
        if any(lin.bias is None for lin in linears):
            return False
        ropes |= {(a.compute_cis.keywords["dim"], a.compute_cis.keywords["theta"]) for a in (sa, ca)}
    return len(ropes) == 1


def use_fused_training(model: torch.nn.Module) -> bool:
    """Swap the class of ``model.memory_attention`` to :class:`TrainMemoryAttention` where its layers
    fit (same parameters and state-dict keys; Meta's package is not modified). Returns whether it changed."""
    attention = getattr(model, "memory_attention", None)
    if type(attention) not in (MemoryAttention, EvalMemoryAttention) or not _fits(attention):
        return False
    attention.__class__ = TrainMemoryAttention
    return True
