"""What a slice's memory attention reads in eval, with each memory frame's keys computed once.

SAM2 builds a slice's memory from scratch at every slice (``SAM2Base.
_prepare_memory_conditioned_features``): every memory frame's keys are projected and rotated
again at every read (a 100-slice volume reads about 100 frames 666 times). The keys of one
frame in layer ``i`` are ``RoPE(W_i (m + p + tau_j) + b_i)``, with ``m`` the frame's memory,
``p`` its spatial encoding and ``tau_j`` the temporal encoding of its place ``j`` in this read.
Projection and rotation are linear, so this is ``RoPE(W_i (m + p) + b_i) + RoPE(W_i tau_j)``:
:class:`KeyCache` keeps the first term per frame and layer and the second per layer and place
(equal up to rounding: the sum is taken in another order). A frame's keys are dropped when a
read no longer uses it, so the cache holds what one slice reads (its window and conditioning
frames); a frame read again after that is computed again, never wrong.

:func:`select_memories` is step 1 of Meta's function (which frames, at which temporal place,
which object pointers), line for line, so that the frames are known by name; the tests check
the whole read against Meta's function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sam2.modeling.sam2_utils import get_1d_sine_pe, select_closest_cond_frames
from torch import Tensor

__all__ = ["MemoryRead", "select_memories", "KeyCache"]

Memory = dict[str, dict[int, dict[str, Tensor]]]  # SAM2's output_dict: bank -> frame -> entry


@dataclass
class MemoryRead:
    """The memories one slice attends to, in Meta's order.

    ``frames`` are (entry, place): ``place`` indexes ``maskmem_tpos_enc``. ``ptrs`` and
    ``ptr_pos`` are the object-pointer tokens (P, K, mem_dim), which get no rotary encoding.
    """

    frames: list[tuple[dict[str, Tensor], int]]
    ptrs: Tensor | None
    ptr_pos: Tensor | None

    def values(self, device: torch.device) -> Tensor:
        """The raw memories, (K, N_k, mem_dim): what the rank-64 value path attends to."""
        parts = [entry["maskmem_features"].to(device, non_blocking=True).flatten(2).permute(2, 0, 1)
                 for entry, _ in self.frames]
        if self.ptrs is not None:
            parts.append(self.ptrs)
        return torch.cat(parts, dim=0).transpose(0, 1)


def select_memories(model: torch.nn.Module, frame_idx: int, memory: Memory, num_frames: int,
                    reverse: bool) -> MemoryRead:
    """Step 1 of Meta's ``_prepare_memory_conditioned_features`` for a slice that reads memory."""
    m, device = model, model.maskmem_tpos_enc.device
    cond, non_cond = memory["cond_frame_outputs"], memory["non_cond_frame_outputs"]
    selected, unselected = select_closest_cond_frames(frame_idx, cond, m.max_cond_frames_in_attn)
    places = [(0, out) for out in selected.values()]
    stride = 1 if m.training else m.memory_temporal_stride_for_eval
    for t_pos in range(1, m.num_maskmem):
        t_rel = m.num_maskmem - t_pos
        if t_rel == 1:
            prev = frame_idx + 1 if reverse else frame_idx - 1
        elif not reverse:
            prev = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
        else:
            prev = -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride
        out = non_cond.get(prev)
        places.append((t_pos, out if out is not None else unselected.get(prev)))
    frames = [(out, m.num_maskmem - t_pos - 1) for t_pos, out in places if out is not None]
    if not m.use_obj_ptrs_in_encoder:
        return MemoryRead(frames, None, None)
    max_ptrs = min(num_frames, m.max_obj_ptrs_in_encoder)
    if not m.training and m.only_obj_ptrs_in_the_past_for_eval:
        ptr_cond = {t: out for t, out in selected.items() if (t >= frame_idx if reverse else t <= frame_idx)}
    else:
        ptr_cond = selected
    sign = -1 if reverse else 1
    pos_and_ptrs = [((frame_idx - t) * sign if m.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t),
                     out["obj_ptr"]) for t, out in ptr_cond.items()]
    for t_diff in range(1, max_ptrs):
        t = frame_idx + t_diff if reverse else frame_idx - t_diff
        if t < 0 or (num_frames is not None and t >= num_frames):
            break
        out = non_cond.get(t, unselected.get(t, None))
        if out is not None:
            pos_and_ptrs.append((t_diff, out["obj_ptr"]))
    if not pos_and_ptrs:
        return MemoryRead(frames, None, None)
    pos_list, ptrs_list = zip(*pos_and_ptrs, strict=True)
    ptrs = torch.stack(ptrs_list, dim=0)
    b, c = ptrs.shape[1], m.hidden_dim
    if m.add_tpos_enc_to_obj_ptrs:
        tpos_dim = c if m.proj_tpos_enc_in_obj_ptrs else m.mem_dim
        obj_pos = torch.tensor(pos_list).to(device=device, non_blocking=True)
        obj_pos = m.obj_ptr_tpos_proj(get_1d_sine_pe(obj_pos / (max_ptrs - 1), dim=tpos_dim))
        obj_pos = obj_pos.unsqueeze(1).expand(-1, b, m.mem_dim)
    else:
        obj_pos = ptrs.new_zeros(len(pos_list), b, m.mem_dim)
    if m.mem_dim < c:  # a pointer becomes c // mem_dim tokens
        ptrs = ptrs.reshape(-1, b, c // m.mem_dim, m.mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
        obj_pos = obj_pos.repeat_interleave(c // m.mem_dim, dim=0)
    return MemoryRead(frames, ptrs, obj_pos)


class KeyCache:
    """Per-frame keys of the memory attention's cross-attention, for one propagation in eval.

    Valid while the weights do not change (one ``propagate`` without gradients). Its layers'
    cross-attention must be :class:`~medsam2_hpc.models.memory_attention.LowRankValueAttention`.
    """

    def __init__(self, attention: torch.nn.Module, tpos_enc: Tensor) -> None:
        self._layers = [layer for layer in attention.layers]
        self._tpos = tpos_enc  # (num_maskmem, 1, 1, mem_dim)
        self._frames: dict[int, tuple[Tensor, list[Tensor]]] = {}  # id(features) -> (features, keys)
        self._places: dict[tuple[int, int], Tensor] = {}  # (layer, place) -> rotated W tau

    def keys(self, read: MemoryRead, device: torch.device) -> list[Tensor]:
        """Each layer's keys (K, heads, N_k, head dim) of ``read``'s memories, in its order."""
        frames = [(self._frame(entry, device), place) for entry, place in read.frames]
        keep = {id(entry["maskmem_features"]) for entry, _ in read.frames}
        self._frames = {key: value for key, value in self._frames.items() if key in keep}
        out = []
        for i, layer in enumerate(self._layers):
            with_pos = layer.pos_enc_at_cross_attn_keys
            parts = [keys[i] + self._place(i, place, keys[i].shape[-2]) if with_pos else keys[i]
                     for keys, place in frames]
            if read.ptrs is not None:
                ptrs = read.ptrs + read.ptr_pos if with_pos else read.ptrs
                parts.append(layer.cross_attn_image.keys(ptrs.transpose(0, 1), rotate=False))
            out.append(torch.cat(parts, dim=2))
        return out

    def _frame(self, entry: dict[str, Tensor], device: torch.device) -> list[Tensor]:
        """The frame's rotated keys without its temporal term, per layer (computed on first use)."""
        feats = entry["maskmem_features"]
        cached = self._frames.get(id(feats))
        if cached is not None and cached[0] is feats:
            return cached[1]
        x = feats.to(device, non_blocking=True).flatten(2).transpose(1, 2)  # (K, N, mem_dim)
        pos = entry["maskmem_pos_enc"][-1].to(device).flatten(2).transpose(1, 2)
        keys = [layer.cross_attn_image.keys(x + pos if layer.pos_enc_at_cross_attn_keys else x, rotate=True)
                for layer in self._layers]
        self._frames[id(feats)] = (feats, keys)
        return keys

    def _place(self, layer: int, place: int, n: int) -> Tensor:
        """Rotated projection (no bias) of the temporal encoding of ``place``, (1, heads, n, head dim)."""
        key = (layer, place)
        if key not in self._places:
            attn = self._layers[layer].cross_attn_image
            tau = torch.nn.functional.linear(self._tpos[place].flatten(), attn.k_proj.weight)
            self._places[key] = attn.rotated(attn._separate_heads(tau.expand(1, n, -1), attn.num_heads))
        return self._places[key]
