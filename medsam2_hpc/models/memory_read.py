"""What a slice's memory attention reads in eval, with each memory frame's keys computed once.

SAM2 builds a slice's memory from scratch at every slice (``SAM2Base.
_prepare_memory_conditioned_features``): every memory frame's keys are projected and rotated
again at every read (a 100-slice volume reads about 100 frames 666 times). The keys of one
frame in layer ``i`` are ``RoPE(W_i (m + p + tau_j) + b_i)``, with ``m`` the frame's memory,
``p`` its spatial encoding and ``tau_j`` the temporal encoding of its place ``j`` in this read.
Projection and rotation are linear, so this is ``RoPE(W_i (m + p) + b_i) + RoPE(W_i tau_j)``:
:class:`KeyCache` keeps the first term per frame and layer and the second per layer and place
(equal up to rounding: the sum is taken in another order), and the frame's memory flattened as
the values. The first term of all layers is one projection (their weights stacked) and one
rotation; the second is added to a read's concatenated keys in one add per layer. A frame is
dropped when a read no longer uses it, so the cache holds what one slice reads (its window and
conditioning frames); a frame read again after that is computed again, never wrong. Fewer host
ops than Meta's read (Hiera-S, 128 px, 13 organs, 24 slices, counted on meta tensors: 940 -> 914
aten ops per slice) and fewer FLOPs (the keys of a frame projected once, not at every read).

:func:`select_memories` is step 1 of Meta's function (which frames, at which temporal place,
which object pointers), line for line, so that the frames are known by name; the tests check
the whole read against Meta's function. :func:`training_memory` is its step 2 for training: the
memories and their encodings concatenated in a few batched ops instead of four per frame (the
selective recompute runs it again, and autograd differentiates each op).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sam2.modeling.sam2_utils import get_1d_sine_pe, select_closest_cond_frames
from torch import Tensor

from .constants import cached_constant

__all__ = ["MemoryRead", "select_memories", "training_memory", "KeyCache"]

Memory = dict[str, dict[int, dict[str, Tensor]]]  # SAM2's output_dict: bank -> frame -> entry
_MAX_PLACES = 64  # temporal terms kept per cache, (layer, frame places, pointer count) each


@dataclass
class MemoryRead:
    """The memories one slice attends to, in Meta's order.

    ``frames`` are (entry, place): ``place`` indexes ``maskmem_tpos_enc``. ``ptrs`` and
    ``ptr_pos`` are the object-pointer tokens (P, K, mem_dim), which get no rotary encoding.
    """

    frames: list[tuple[dict[str, Tensor], int]]
    ptrs: Tensor | None
    ptr_pos: Tensor | None

    def length(self) -> int:
        """How many memory tokens the read attends to (N_k)."""
        n = sum(entry["maskmem_features"].shape[2:].numel() for entry, _ in self.frames)
        return n + (0 if self.ptrs is None else self.ptrs.shape[0])


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
    else:  # zeros: made at their final size (one op, not zeros then their copies per token)
        obj_pos = ptrs.new_zeros(len(pos_list) * max(1, c // m.mem_dim), b, m.mem_dim)
    if m.mem_dim < c:  # a pointer becomes c // mem_dim tokens
        ptrs = ptrs.reshape(-1, b, c // m.mem_dim, m.mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
        if m.add_tpos_enc_to_obj_ptrs:
            obj_pos = obj_pos.repeat_interleave(c // m.mem_dim, dim=0)
    return MemoryRead(frames, ptrs, obj_pos)


def _place_index(model: torch.nn.Module, read: MemoryRead, device: torch.device) -> Tensor:
    """The read's frame places as an index tensor on ``device``, made once per pattern (they repeat)."""
    places = tuple(p for _, p in read.frames)
    return cached_constant(model, ("places", places, device),
                           lambda: torch.tensor(places).to(device, non_blocking=True))


def training_memory(model: torch.nn.Module, read: MemoryRead) -> tuple[Tensor, Tensor, int]:
    """Step 2 of Meta's ``_prepare_memory_conditioned_features`` for ``read``: the memory (N_k, K,
    mem_dim), its encoding and the pointer-token count, as the memory attention takes them.

    Meta flattens each frame, and adds its temporal encoding, one frame at a time; here all frames
    are one concatenation and the temporal encodings (picked by one index) are added in one
    broadcast add: the same values in the same order (frames, then pointer tokens).
    """
    n = len(read.frames)
    feats = torch.cat([entry["maskmem_features"] for entry, _ in read.frames], dim=2)  # (K, C, n H, W)
    pos = torch.cat([entry["maskmem_pos_enc"][-1] for entry, _ in read.frames], dim=2)
    memory = feats.flatten(2).permute(2, 0, 1)
    tau = model.maskmem_tpos_enc.index_select(0, _place_index(model, read, feats.device))
    memory_pos = (pos.flatten(2).permute(2, 0, 1).unflatten(0, (n, -1)) + tau).flatten(0, 1)
    if read.ptrs is None:
        return memory, memory_pos, 0
    return (torch.cat([memory, read.ptrs]), torch.cat([memory_pos, read.ptr_pos]), read.ptrs.shape[0])


class KeyCache:
    """Per-frame values and keys of the memory attention's cross-attention, for one propagation in eval.

    Valid while the weights do not change (one ``propagate`` without gradients). Its layers'
    cross-attention must be :class:`~medsam2_hpc.models.memory_attention.LowRankValueAttention`
    (alike in heads and rotary encoding, as Meta's cloned layers are); the layers' key projections
    run as one (their weights stacked), and so do their rotations.
    """

    def __init__(self, attention: torch.nn.Module, tpos_enc: Tensor) -> None:
        self._layers = list(attention.layers)
        with_pos = {layer.pos_enc_at_cross_attn_keys for layer in self._layers}
        if len(with_pos) != 1:
            raise ValueError("KeyCache: the layers differ in adding the memories' positions to the keys")
        self._with_pos = with_pos.pop()
        self._attn = self._layers[0].cross_attn_image  # rotary encoding and head split of them all
        proj = [layer.cross_attn_image.k_proj for layer in self._layers]
        self._weight = torch.cat([p.weight for p in proj])  # (layers x internal dim, mem_dim)
        self._bias = torch.cat([p.bias if p.bias is not None else p.weight.new_zeros(p.out_features)
                                for p in proj])
        self._tpos = tpos_enc  # (num_maskmem, 1, 1, mem_dim)
        # id(features) -> (features, values (K, N, mem_dim), rotated keys per layer)
        self._frames: dict[int, tuple[Tensor, Tensor, list[Tensor]]] = {}
        self._taus: dict[tuple[int, int], Tensor] = {}  # (layer, place) -> rotated W tau
        self._places: dict[tuple, Tensor] = {}  # (layer, places, pointer tokens) -> the taus, concatenated

    def read(self, read: MemoryRead, device: torch.device) -> tuple[Tensor, list[Tensor]]:
        """``read``'s raw memories (K, N_k, mem_dim), what the rank-64 value path attends to, and
        each layer's keys (K, heads, N_k, head dim), in its order."""
        frames = [self._frame(entry, device) for entry, _ in read.frames]
        keep = {id(entry["maskmem_features"]) for entry, _ in read.frames}
        self._frames = {key: value for key, value in self._frames.items() if key in keep}
        places = tuple(place for _, place in read.frames)
        n_ptrs = 0 if read.ptrs is None else read.ptrs.shape[0]
        values = [v for _, v, _ in frames]
        ptr_keys = None
        if read.ptrs is not None:
            values.append(read.ptrs.transpose(0, 1))
            ptr_keys = self._split(self._project(
                (read.ptrs + read.ptr_pos if self._with_pos else read.ptrs).transpose(0, 1)))
        out, n = [], frames[0][1].shape[1]
        for i in range(len(self._layers)):
            parts = [frame_keys[i] for *_, frame_keys in frames] + ([] if ptr_keys is None else [ptr_keys[i]])
            keys = torch.cat(parts, dim=2)
            out.append(keys + self._place(i, places, n_ptrs, n) if self._with_pos else keys)
        return torch.cat(values, dim=1), out

    def _frame(self, entry: dict[str, Tensor], device: torch.device) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The frame's values and rotated keys without the temporal term, per layer (made on first use)."""
        feats = entry["maskmem_features"]
        cached = self._frames.get(id(feats))
        if cached is not None and cached[0] is feats:
            return cached
        x = feats.to(device, non_blocking=True).flatten(2).transpose(1, 2)  # (K, N, mem_dim)
        pos = entry["maskmem_pos_enc"][-1].to(device).flatten(2).transpose(1, 2)
        keys = self._split(self._attn.rotated(self._project(x + pos if self._with_pos else x)))
        self._frames[id(feats)] = (feats, x, keys)
        return self._frames[id(feats)]

    def _project(self, x: Tensor) -> Tensor:
        """(K, N, mem_dim) -> every layer's projected keys, (K, layers x heads, N, head dim)."""
        k, n = x.shape[:2]
        y = torch.nn.functional.linear(x, self._weight, self._bias)
        return y.view(k, n, len(self._layers) * self._attn.num_heads, -1).transpose(1, 2)

    def _split(self, keys: Tensor) -> list[Tensor]:
        """(K, layers x heads, N, head dim) -> each layer's (K, heads, N, head dim)."""
        return list(keys.split(self._attn.num_heads, dim=1))

    def _place(self, layer: int, places: tuple[int, ...], n_ptrs: int, n: int) -> Tensor:
        """Rotated projections (no bias) of the temporal encodings of the frames at ``places``, n
        tokens each, then zeros for the pointer tokens: (1, heads, N_k, head dim), one add per layer."""
        key = (layer, places, n_ptrs)
        if key not in self._places:
            if len(self._places) >= _MAX_PLACES:  # reads near the ends and prompts vary; the middle repeats
                self._places.clear()
            parts = [self._tau(layer, place, n) for place in places]
            parts.append(parts[0].new_zeros(1, parts[0].shape[1], n_ptrs, parts[0].shape[-1]))
            self._places[key] = torch.cat(parts, dim=2)
        return self._places[key]

    def _tau(self, layer: int, place: int, n: int) -> Tensor:
        """Rotated projection (no bias) of the temporal encoding of ``place``: (1, heads, n, head dim)."""
        key = (layer, place)
        if key not in self._taus:
            attn = self._layers[layer].cross_attn_image
            tau = torch.nn.functional.linear(self._tpos[place].flatten(), attn.k_proj.weight)
            self._taus[key] = attn.rotated(attn._separate_heads(tau.expand(1, n, -1), attn.num_heads))
        return self._taus[key]
