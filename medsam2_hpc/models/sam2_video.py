"""Batched-objects propagation through SAM2's memory: the core of 3D training and inference.

A CT volume is a video of slices; SAM2's memory attention carries each organ from its
prompted slices to the others. SAM2's own video predictor runs the objects of a video one
after another (3.9 slices/s with 13 organs against 40 with one). Here the organs are the
batch dimension of one pass: the image encoder runs once per slice (under ``no_grad`` when
frozen) and its features are *expanded* (a view, no copy) over the objects, so only the
per-object parts (memory attention, mask decoder, memory encoder) grow with the organ count.
The same generator runs with gradients (training flows through the memories) and without
(inference), so validation, ``inference_3d.py`` and the benchmark measure the trained code.

Memory: with ``checkpoint=True`` part of each slice's per-object work is recomputed in the
backward pass instead of stored. Its activations grow with the object count (an H100's peak
without recompute: 44.9 GiB with 13 organs, 11.6 with 3), far above 24 GiB. What the autograd
graph holds after an 8-slice 1024 px clip's forward (Hiera-S, bf16, 13 organs, 4 prompted slices
run as one batch P, 4 tracked slices T; ``bench_sam2.py --mode memory3d``, counted on fake CUDA
tensors; state 0.3 GiB more), in GiB, by what the backward runs again (* counted before the
training glue's last cuts, which moved the others by up to 0.6):

    nothing                                                          34.1
    memory attention only (decoder and memory encoder stored)        24.3*
    decoder and memory encoder only                                  21.1*
    all but the decoder of P and T                                   15.5
    all but T's decoder and memory encoder                           16.7*
    all but T's memory encoder                                       14.3*
    all but T's decoder (the default)                                13.0
    everything                                                       10.6
    ... with the memory attention in full (``keep_attention=False``): default 5.8, everything 3.4*

(memory attention selective unless said; P's "attention" reads no memory, nothing to recompute).
The peak adds the backward's transients (a recomputed slice, gradients, workspaces): an H100
measured 10.2 GiB with everything recomputed in full at 3.2 held, 6.7 GiB over held and state.
Recomputing less only shrinks them, so held + 7.0 bounds the peak: 20.0 GiB for the default,
4.0 under the budget (the 3 GiB margin kept; storing P's decoder too, 22.5, would not keep it;
storing P's instead of T's, 13.5* held, would spare one decoder call, not four).
Storing T's decoder spares the backward its ~300 host ops per tracked slice: 12,504 -> 11,352
``host_ops_per_step`` per 128 px clip (Hiera-T, 13 organs, CPU); its arithmetic is small (0.19
TFLOP per 1024 px clip: the decoder is 0.37 of the forward's 22.4, the memory encoder 1.2). The
memory attention's recompute is selective by default (``keep_attention``): the fused attention kernels'
outputs are kept, with dropout's, and only the cheap rest runs again (16 TFLOP per clip fewer than
in full by PyTorch's FLOP counter, README). Both fit the budget, so the faster one should
be the default, and that needs a GPU: on the CPU they issue as many ops, while the selective one
saves GPU arithmetic for a Python dispatch mode on each of its ops. Until a GPU times both
(``benchmarks/gpu_session.sh`` runs each), the selective one stays the default.
Positional encodings depend only on the feature shape, so one copy serves every slice and object.
A clip's prompted slices read no memory, so training runs them as one batch of slices x objects
(``propagate(batch_prompted=True)``): one decoder and memory-encoder call, not one per slice.

Built on SAM2Base's own pieces (``_prepare_memory_conditioned_features``,
``_forward_sam_heads``, ``_use_mask_as_output``, ``_encode_new_memory``) as Meta's SAM2Train
does; only the batching of objects and the mixing of prompt kinds on one slice are ours. In
training, the glue of three of them runs as our own rewrite with fewer host ops (the training step
is host-bound): :func:`~.memory_read.training_memory`, :func:`_train_heads` and
:func:`_train_memory`, held to Meta's functions, outputs and gradients, by
``tests/test_train_glue.py``. Eval calls Meta's (its predictor's results are the reference there).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from sam2.modeling.sam2_base import NO_OBJ_SCORE
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from .constants import cached_constant
from .heads import use_lean_heads
from .memory_attention import (
    EvalMemoryAttention,
    LowRankValueAttention,
    use_eval_shortcuts,
    use_fused_training,
)
from .memory_read import KeyCache, select_memories, training_memory
from .sam2 import META_FILL_HOLE_AREA, set_postprocess

Memory = dict[str, dict[int, dict[str, Tensor]]]  # SAM2's output_dict: bank -> slice -> entry

__all__ = ["FrameFeatures", "ObjectPrompts", "FrameOutput", "VideoPropagator", "propagation_order",
           "merge_prompts", "normalise_images", "ATTENTION"]

# attention kernels to try first: "default" = PyTorch's own order (flash first on recent GPUs);
# "cudnn" = cuDNN's fused attention first (a candidate on Hopper, where flash is not tuned for
# SAM2's single 256-wide head; compare with the benchmark's --attention), falling back to
# flash, memory-efficient, math where cuDNN does not take the shapes
ATTENTION = ("default", "cudnn")
_CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.MATH]

_MEAN = (0.485, 0.456, 0.406)  # SAM2 was trained on ImageNet-normalised RGB
_STD = (0.229, 0.224, 0.225)


def normalise_images(images: Tensor) -> Tensor:
    """[0, 1] RGB (N, 3, S, S) -> the normalisation SAM2's encoder expects."""
    mean = images.new_tensor(_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(_STD).view(1, 3, 1, 1)
    return (images - mean) / std


@dataclass
class FrameFeatures:
    """Image features of one slice (batch 1) in SAM2's flattened (HW, B, C) layout.

    ``vision_pos`` holds the positional encoding of the last level only (the one memory
    attention reads), one tensor shared by all slices: it depends on the shape alone, and
    per-slice copies of every level were most of a 100-slice volume's memory.
    """

    vision_feats: list[Tensor]
    vision_pos: list[Tensor]
    feat_sizes: list[tuple[int, int]]


@dataclass
class ObjectPrompts:
    """Prompts of all K objects on one conditioning slice, in model-input pixels.

    Object k takes ``masks[k]`` when ``use_mask[k]`` (an empty mask says "absent here"),
    else its points: clicks (labels 1/0) or box corners (labels 2/3), -1 = padding.
    ``use_mask`` and ``point_labels`` live on the host (moved there when given on the device,
    which waits for it): which objects share a decoder call is read from them once, here, so
    propagating a slice never waits for the device. Masks and coordinates may live anywhere.
    """

    use_mask: Tensor  # (K,) bool, on the host
    masks: Tensor | None = None  # (K, 1, S, S) float in {0, 1}
    point_coords: Tensor | None = None  # (K, P, 2) as (x, y)
    point_labels: Tensor | None = None  # (K, P) int32, on the host
    plan: list[tuple[Tensor, str, int]] | None = None  # the groups, when the maker already knows them

    def __post_init__(self) -> None:
        if self.use_mask.device.type != "cpu":
            self.use_mask = self.use_mask.cpu()
        if self.point_labels is not None and self.point_labels.device.type != "cpu":
            self.point_labels = self.point_labels.cpu()
        if self.plan is not None:
            self._groups = self.plan
            return
        if bool(self.use_mask.any()) and self.masks is None:
            raise ValueError("ObjectPrompts: use_mask set but no masks given")
        if bool((~self.use_mask).any()) and self.point_coords is None:
            raise ValueError("ObjectPrompts: objects without a mask need points")
        self._groups = self._group()

    def groups(self) -> list[tuple[Tensor, str, int]]:
        """Objects that can share one decoder call: (host indices, 'mask'|'points', n_points).

        Splitting by prompt kind and point count keeps each object's result identical to
        running it alone (padding tokens and the multimask rule depend on the point count).
        """
        return self._groups

    def _group(self) -> list[tuple[Tensor, str, int]]:
        use_mask = self.use_mask
        out: list[tuple[Tensor, str, int]] = []
        mask_idx = torch.nonzero(use_mask).flatten()
        if mask_idx.numel():
            out.append((mask_idx, "mask", 0))
        if self.point_labels is not None:
            counts = (self.point_labels >= 0).sum(dim=1)
            for n in sorted(set(counts[~use_mask].tolist())):
                out.append((torch.nonzero((counts == n) & ~use_mask).flatten(), "points", n))
        return out


@dataclass
class FrameOutput:
    """What one slice produced for its K objects."""

    low_res: Tensor  # (K, 1, s, s) mask logits at a quarter of the input size
    high_res: Tensor  # (K, 1, S, S) mask logits at the input size
    object_score: Tensor  # (K, 1) logit that the object is on this slice
    from_decoder: Tensor  # (K,) bool: False where the output is the prompt mask itself
    is_cond: bool
    multimasks: Tensor  # (K, M, S, S) every mask the decoder proposed (M = 1 or 3), for the loss
    ious: Tensor  # (K, M) the IoU head's estimate of each


def propagation_order(num_frames: int, cond_frames: Sequence[int]) -> list[tuple[int, bool, bool]]:
    """(frame, is_cond, reverse) in the order SAM2 must see them.

    Prompted slices first (they need no memory), then forward from the first prompted
    slice to the end, then backwards from it to slice 0, as SAM2's video predictor does.
    """
    cond = sorted(set(int(t) for t in cond_frames))
    if not cond:
        raise ValueError("at least one conditioning frame is needed")
    if cond[0] < 0 or cond[-1] >= num_frames:
        raise ValueError(f"conditioning frames {cond} outside 0..{num_frames - 1}")
    order = [(t, True, False) for t in cond]
    order += [(t, False, False) for t in range(cond[0] + 1, num_frames) if t not in cond]
    order += [(t, False, True) for t in range(cond[0] - 1, -1, -1)]
    return order


class VideoPropagator:
    """Runs SAM2 over a clip or volume with all objects batched.

    Args:
        model: a SAM2Base (built by :mod:`medsam2_hpc.models.sam2`).
        max_cond_frames: prompted slices each slice attends to (closest first; -1 = all).
            Dense prompts (every 2nd slice of a 200-slice volume) would otherwise make the
            memory grow with the volume.
        checkpoint: with gradients on, recompute each slice's per-object work in the backward
            pass instead of storing it, all but the tracked slices' decoder (activation
            checkpointing, sized by the module docstring; same gradients, dropout included, as
            the RNG state is replayed).
        keep_attention: with ``checkpoint``, keep the attention kernels' and dropout's outputs
            and recompute only the rest (:func:`_save_seeded_ops`): 16 fewer TFLOP per 1024 px
            clip, 7.2 GiB more held at 13 organs (still within 24 GiB), a dispatch mode's host
            cost on every op of the attention. The default until a GPU shows which is faster
            (module docstring).
        attention: one of :data:`ATTENTION`; which fused attention kernel the memory attention
            and decoder try first (memory attention is most of the per-object time).
        postprocess: ``meta`` = what Meta's ``build_sam2_video_predictor`` adds, in eval mode:
            its config settings (:func:`~medsam2_hpc.models.sam2.set_postprocess`, set on
            ``model``) and holes of up to 8 low-res pixels filled in each output with Meta's own
            ``fill_holes_in_mask_scores``. That function needs the CUDA extension ``sam2._C``;
            without it Meta's code warns and leaves the masks as they are, and so does ours (it
            is the same call). ``none``: neither. In eval mode, in both, a prompted slice's
            memory is encoded from its (filled) low-res output resized to the input, as
            ``SAM2VideoPredictor`` does (for a mask prompt that is the mask after a round trip
            through the low resolution; SAM2Train, and so training, uses the mask itself).
        compile: compile the memory attention, memory encoder and mask decoder with
            ``torch.compile(dynamic=True)`` in place (parameters and checkpoints unchanged; the
            memory count varies by slice, the decoder's batch and prompt tokens by call, ``dynamic``
            keeps them from recompiling). The decoder compiles as one graph forward and backward since
            :mod:`.heads` runs its transformer on row matrices; before that the inductor (torch 2.14)
            failed on it ("cannot determine truth value of Relational": the strides of ``transpose(1,
            2).view(b, c, h, w)``, saved for backward, compared symbolically). Off by default: the
            first slices pay the compilation, and no GPU measurement has shown the gain yet. With
            ``checkpoint`` it needs ``keep_attention=False``: the selective recompute of the compiled
            memory attention fails in backward ("Tensor cached during selective activation
            checkpoint has been mutated", torch 2.14, CPU).
    """

    def __init__(self, model: torch.nn.Module, *, max_cond_frames: int = -1,
                 checkpoint: bool = False, keep_attention: bool = True, attention: str = "default",
                 postprocess: str = "none", compile: bool = False) -> None:
        if max_cond_frames != -1 and max_cond_frames < 2:
            raise ValueError("max_cond_frames must be -1 or >= 2 (SAM2 keeps the one before and after)")
        if attention not in ATTENTION:
            raise ValueError(f"attention {attention!r} is not one of {ATTENTION}")
        if compile and checkpoint and keep_attention:  # the recompute fails on the compiled modules
            raise ValueError("compile needs plain checkpointing (keep_attention=False): the selective "
                             "recompute's cached tensors are mutated by the compiled memory attention")
        self.model = model
        self.checkpoint = checkpoint
        self._context_fn = _SAVE_SEEDED if keep_attention else torch.utils.checkpoint.noop_context_fn
        self.attention = attention
        model.max_cond_frames_in_attn = max_cond_frames
        set_postprocess(model, postprocess)
        self.postprocess = postprocess
        _share_expanded_rows(model)
        use_fused_training(model)  # the memory attention's training path with fewer host ops
        use_lean_heads(model)  # prompt encoder, mask decoder and memory encoder with fewer host ops
        if compile:
            model.memory_attention.compile(dynamic=True)
            model.memory_encoder.compile(dynamic=True)
            model.sam_mask_decoder.compile(dynamic=True)

    # image features -------------------------------------------------------------------
    def encode(self, images: Tensor, *, chunk: int = 8) -> list[FrameFeatures]:
        """Features of every slice of ``images`` (T, 3, S, S) in [0, 1], ``chunk`` at a time.

        The trunk and neck run under ``no_grad`` when none of their parameters train: the
        frozen encoder is most of the FLOPs and would otherwise keep its activations. The
        mask decoder's high-resolution projections (conv_s0/s1) stay outside it, as they
        belong to the (trainable) decoder.
        """
        m = self.model
        enc_trains = torch.is_grad_enabled() and any(p.requires_grad for p in m.image_encoder.parameters())
        frames: list[FrameFeatures] = []
        shared_pos: list[Tensor] = []
        for start in range(0, images.shape[0], chunk):
            batch = normalise_images(images[start:start + chunk])
            with torch.set_grad_enabled(enc_trains):
                out = m.image_encoder(batch)
            fpn = list(out["backbone_fpn"])
            if m.use_high_res_features_in_sam:
                fpn[0] = m.sam_mask_decoder.conv_s0(fpn[0])
                fpn[1] = m.sam_mask_decoder.conv_s1(fpn[1])
            _, feats, pos, sizes = m._prepare_backbone_features(
                {"backbone_fpn": fpn, "vision_pos_enc": out["vision_pos_enc"]})
            if not shared_pos:  # a copy, so the batch's encodings of every level can be freed
                shared_pos = [pos[-1][:, :1].clone()]
            # each slice's rows by one split per level (one op, and one in the backward pass)
            for levels in zip(*(f.split(1, dim=1) for f in feats), strict=True):
                frames.append(FrameFeatures(list(levels), shared_pos, sizes))
        return frames

    # one slice ------------------------------------------------------------------------
    def step(self, t: int, feats: FrameFeatures, num_objects: int, prompts: ObjectPrompts | None,
             memory: dict[str, dict[int, dict[str, Tensor]]], num_frames: int,
             reverse: bool = False, keys: KeyCache | None = None) -> FrameOutput:
        """Segment the K objects on slice ``t`` and add its memory to ``memory``.

        ``prompts`` given: a conditioning slice (no memory read, SAM2's initial-frame path);
        otherwise the slice attends to the stored memories of the other slices, their keys
        from ``keys`` when given (:meth:`_key_cache`).
        """
        if prompts is not None:
            return self.step_prompted({t: prompts}, [feats], num_objects, memory, num_frames)[0]
        return self._run([t], [feats], num_objects, None, memory, num_frames, reverse, keys)[0]

    def step_prompted(self, prompts: dict[int, ObjectPrompts], feats: Sequence[FrameFeatures],
                      num_objects: int, memory: dict[str, dict[int, dict[str, Tensor]]], num_frames: int
                      ) -> list[FrameOutput]:
        """:meth:`step` for several prompted slices at once (``feats`` in the order of ``prompts``).

        A prompted slice reads no memory, so P of them are one batch of P x K objects: one
        decoder and one memory-encoder call instead of P, each row computing what it would alone.
        """
        return self._run(list(prompts), feats, num_objects, merge_prompts(list(prompts.values())), memory,
                         num_frames, False, None)

    def _run(self, frames: list[int], feats: Sequence[FrameFeatures], k: int, prompts: ObjectPrompts | None,
             memory: dict[str, dict[int, dict[str, Tensor]]], num_frames: int, reverse: bool,
             keys: KeyCache | None) -> list[FrameOutput]:
        """Slices ``frames`` (several only when prompted) as one batch of ``len(frames) * k`` objects."""
        # what these slices may read: a recomputation in the backward pass must see the same
        past = {bank: dict(frames) for bank, frames in memory.items()}
        is_cond, sizes, rows = prompts is not None, feats[0].feat_sizes, len(frames) * k
        levels = [_cat_batch([f.vision_feats[i] for f in feats]) for i in range(len(sizes))]

        def attend(vision: Tensor, pos: Tensor) -> Tensor:  # also what the backward pass recomputes
            with self._kernels(), _uncached_autocast(vision.device):
                return self._attend(frames[0], _per_object(vision, k, 1), pos, sizes[-1], rows, is_cond,
                                    past, num_frames, reverse, keys)

        def finish(pix: Tensor, *vision: Tensor) -> tuple:
            with self._kernels():
                return self._finish(pix, list(vision), sizes, k, prompts)

        def memorize(vision: Tensor, low: Tensor, high: Tensor, score: Tensor) -> tuple:
            with self._kernels():
                return self._memorize(vision, sizes, k, prompts, low, high, score)

        if not (self.checkpoint and torch.is_grad_enabled()):
            outs = finish(attend(levels[-1], feats[0].vision_pos[-1]), *levels)
        elif is_cond:
            # a prompted batch reads no memory (its "attention" adds SAM2's no-memory embedding:
            # nothing to recompute); its decoder and memory encoder, 4 slices' worth, are one region
            outs = torch.utils.checkpoint.checkpoint(finish, attend(levels[-1], feats[0].vision_pos[-1]),
                                                     *levels, use_reentrant=False)
        else:
            # a tracked slice: memory attention and memory encoder recomputed, the decoder's
            # activations stored (2.4 GiB per 1024 px clip at 13 organs, ~300 host ops per slice
            # not run again; module docstring). The selective recompute's dispatch mode costs host
            # time on every op, so it covers only the memory attention, where the kept outputs save
            # the arithmetic. Not reentrant, though that would skip the detach of each recomputed
            # saved tensor: its bf16 gradients differ (2.6e-3 of a norm; equal in fp32), as the
            # gradients of autocast's weight casts are summed per slice, not over the clip.
            # Tensors as arguments: checkpoint stashes the RNG state of their device (dropout).
            pix = torch.utils.checkpoint.checkpoint(attend, levels[-1], feats[0].vision_pos[-1],
                                                    use_reentrant=False, context_fn=self._context_fn)
            with self._kernels():
                heads = self._heads(pix, levels, sizes, k, None)
            low, high, multi, ious, ptr, score, from_decoder = heads
            low, high, mem_feats, mem_pos = torch.utils.checkpoint.checkpoint(
                memorize, levels[-1], low, high, score, use_reentrant=False)
            outs = low, high, multi, ious, ptr, score, from_decoder, mem_feats, mem_pos
        return _remember(frames, [memory] * len(frames), is_cond, k, outs)

    def _step_pair(self, steps: list[tuple[int, bool, Memory, KeyCache]], get: Callable[[int], FrameFeatures],
                   k: int, num_frames: int) -> list[tuple[int, FrameOutput]]:
        """Unprompted slices (t, reverse, memory, keys) that do not read each other as one batch of
        len(steps) x k objects where their memories are as long (else one by one). Eval only."""
        reads = [select_memories(self.model, t, memory, num_frames, reverse)
                 for t, reverse, memory, _ in steps] if len(steps) > 1 else []
        if len({read.length() for read in reads}) != 1:
            return [(t, self.step(t, get(t), k, None, memory, num_frames, reverse, keys))
                    for t, reverse, memory, keys in steps]
        feats = [get(t) for t, *_ in steps]
        sizes = feats[0].feat_sizes
        levels = [_cat_batch([f.vision_feats[i] for f in feats]) for i in range(len(sizes))]
        memories = [keys.read(read, levels[-1].device) for (*_, keys), read in zip(steps, reads, strict=True)]
        values, layer_keys = zip(*memories, strict=True)
        with self._kernels():
            pix = self.model.memory_attention.read(
                levels[-1], feats[0].vision_pos[-1], k, torch.cat(values),
                [torch.cat(per_layer) for per_layer in zip(*layer_keys, strict=True)])
            pix = pix.permute(1, 2, 0).view(len(steps) * k, -1, *sizes[-1])
            outs = self._finish(pix, levels, sizes, k, None)
        frames = [t for t, *_ in steps]
        return list(zip(frames, _remember(frames, [memory for _, _, memory, _ in steps], False, k, outs),
                        strict=True))

    def _kernels(self) -> contextlib.AbstractContextManager:
        if self.attention == "cudnn":
            return sdpa_kernel(_CUDNN_FIRST, set_priority=True)
        return contextlib.nullcontext()

    def _attend(self, t: int, vision: Tensor, pos: Tensor, size: tuple[int, int], k: int, is_cond: bool,
                memory: dict[str, dict[int, dict[str, Tensor]]], num_frames: int, reverse: bool,
                keys: KeyCache | None) -> Tensor:
        """Memory attention of the K objects on one slice (SAM2's no-memory embedding when prompted)."""
        m = self.model
        if (keys is not None or m.training) and not is_cond and m.num_maskmem > 0:
            read = select_memories(m, t, memory, num_frames, reverse)
            if keys is not None:
                pix = m.memory_attention.read(vision[:, :1], pos, k, *keys.read(read, vision.device))
            else:  # training: Meta's memories and encodings, built in a few batched ops
                mem, mem_pos, n_ptrs = training_memory(m, read)
                pix = m.memory_attention(curr=[vision], curr_pos=[pos.expand(-1, k, -1)], memory=mem,
                                         memory_pos=mem_pos, num_obj_ptr_tokens=n_ptrs)
            return pix.permute(1, 2, 0).view(k, -1, *size)
        return m._prepare_memory_conditioned_features(
            frame_idx=t, is_init_cond_frame=is_cond, current_vision_feats=[vision.expand(-1, k, -1)],
            current_vision_pos_embeds=[pos.expand(-1, k, -1)], feat_sizes=[size], output_dict=memory,
            num_frames=num_frames, track_in_reverse=reverse)

    def _finish(self, pix: Tensor, vision_feats: list[Tensor], sizes: list[tuple[int, int]], k: int,
                prompts: ObjectPrompts | None) -> tuple:
        """The rest of the slices' per-object work (``k`` objects each): mask decoder and memory encoder."""
        low, high, multi, ious, ptr, score, from_decoder = self._heads(pix, vision_feats, sizes, k, prompts)
        low, high, mem_feats, mem_pos = self._memorize(vision_feats[-1], sizes, k, prompts, low, high, score)
        return low, high, multi, ious, ptr, score, from_decoder, mem_feats, mem_pos

    def _heads(self, pix: Tensor, vision_feats: list[Tensor], sizes: list[tuple[int, int]], k: int,
               prompts: ObjectPrompts | None) -> tuple[Tensor, ...]:
        """:meth:`_finish`'s mask decoder: (low, high, multimasks, ious, pointers, scores, from_decoder)."""
        m = self.model
        high_res = None
        if len(vision_feats) > 1:
            high_res = [_per_object(x.permute(1, 2, 0).reshape(x.size(1), x.size(2), *s), k, 0)
                        for x, s in zip(vision_feats[:-1], sizes[:-1], strict=True)]
        rows = pix.shape[0]  # k objects on each of the batch's slices
        if prompts is not None:
            return self._prompted_heads(pix, high_res, prompts, rows)
        heads = functools.partial(_train_heads, m) if m.training else m._forward_sam_heads
        outs = heads(pix, high_res_features=high_res, multimask_output=m._use_multimask(False, None))
        multi, ious, low, high, ptr, score = outs[1:]
        from_decoder = cached_constant(m, ("ones", rows, low.device),
                                       lambda: torch.ones(rows, dtype=torch.bool, device=low.device))
        return low, high, multi, ious, ptr, score, from_decoder

    def _memorize(self, vision: Tensor, sizes: list[tuple[int, int]], k: int, prompts: ObjectPrompts | None,
                  low: Tensor, high: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """:meth:`_finish`'s memory encoder on the slices' last feature level ``vision``: (low, high as
        eval's post-processing leaves them, memory features, memory encodings)."""
        m = self.model
        meta = self.postprocess == "meta" and not m.training
        if prompts is not None and not m.training:  # as Meta's predictor: memory from the low-res output
            low = _fill_holes(low) if meta else low
            high = F.interpolate(low, size=high.shape[-2:], mode="bilinear", align_corners=False)
        encode = functools.partial(_train_memory, m) if m.training else m._encode_new_memory
        mem_feats, mem_pos = encode(current_vision_feats=[_per_object(vision, k, 1)], feat_sizes=sizes,
                                    pred_masks_high_res=high, object_score_logits=score,
                                    is_mask_from_pts=prompts is not None)
        if meta and prompts is None:  # ... and a tracked one from the decoder's, before filling
            low = _fill_holes(low)
        return low, high, mem_feats, mem_pos

    def _prompted_heads(self, pix: Tensor, high_res: list[Tensor] | None, prompts: ObjectPrompts,
                        k: int) -> tuple[Tensor, ...]:
        """Decoder outputs on a prompted slice, one call per group of like prompts.

        Groups propose 1 or 3 masks; single ones are repeated to the widest group's count (a
        copy changes neither the lowest mask loss nor the mean IoU loss).
        """
        m = self.model
        parts: list[tuple[Tensor, tuple]] = []
        for host_idx, kind, n in prompts.groups():
            # a group of every row (in order: groups list rows ascending) takes them as they are
            whole = host_idx.numel() == k
            idx = host_idx if whole else host_idx.to(pix.device, non_blocking=True)
            sub_pix = pix if whole else pix[idx]
            sub_hr = high_res if whole or high_res is None else [h[idx] for h in high_res]
            if kind == "mask":
                masks = prompts.masks if whole else prompts.masks[idx]
                if m.use_mask_input_as_output_without_sam:
                    outs = m._use_mask_as_output(sub_pix, sub_hr, masks)
                else:
                    outs = m._forward_sam_heads(sub_pix, mask_inputs=masks, high_res_features=sub_hr)
            else:
                coords, labels = prompts.point_coords, prompts.point_labels
                if not whole:
                    coords, labels = coords[idx, :n], labels[host_idx, :n]
                elif n < coords.shape[1]:
                    coords, labels = coords[:, :n], labels[:, :n]
                pts = {"point_coords": coords, "point_labels": labels.to(pix.device, non_blocking=True)}
                heads = functools.partial(_train_heads, m) if m.training else m._forward_sam_heads
                outs = heads(sub_pix, point_inputs=pts, high_res_features=sub_hr,
                             multimask_output=m._use_multimask(True, pts))
            if whole:
                return *(outs[i] for i in (3, 4, 1, 2, 5, 6)), self._from_decoder(prompts, k, pix.device)
            parts.append((idx, outs))
        low = _scatter(k, [(i, o[3]) for i, o in parts])
        high = _scatter(k, [(i, o[4]) for i, o in parts])
        width = max(o[1].shape[1] for _, o in parts)
        multi = _scatter(k, [(i, o[1].expand(-1, width, -1, -1)) for i, o in parts])
        ious = _scatter(k, [(i, o[2].expand(-1, width)) for i, o in parts])
        ptr = _scatter(k, [(i, o[5]) for i, o in parts])
        score = _scatter(k, [(i, o[6]) for i, o in parts])
        return low, high, multi, ious, ptr, score, self._from_decoder(prompts, k, low.device)

    def _from_decoder(self, prompts: ObjectPrompts, k: int, device: torch.device) -> Tensor:
        """(k,) bool: which prompted rows' outputs are the decoder's (not the prompt mask passed through)."""
        if self.model.use_mask_input_as_output_without_sam:
            return ~prompts.use_mask.to(device, non_blocking=True)
        return cached_constant(self.model, ("ones", k, device),
                               lambda: torch.ones(k, dtype=torch.bool, device=device))

    # a whole clip or volume -----------------------------------------------------------
    def propagate(self, features: Sequence[FrameFeatures] | Callable[[int], FrameFeatures],
                  prompts: dict[int, ObjectPrompts], num_frames: int, num_objects: int, *,
                  batch_prompted: bool = False) -> Iterator[tuple[int, FrameOutput]]:
        """Yield ``(slice, output)`` for every slice, in :func:`propagation_order` (in eval without
        gradients the reverse sweep interleaved with the forward one, :meth:`_lockstep`: the same
        outputs, another order).

        ``features`` is a list (clip already encoded) or a function of the slice index
        (encode lazily). Memories live only for this call, so gradients reach back through
        every slice of the clip when autograd is on. ``batch_prompted``: the prompted slices go
        through as one batch (:meth:`step_prompted`), for a clip whose features are all at hand;
        a long volume's many prompted slices would make that batch too large.
        """
        get = features if callable(features) else features.__getitem__
        memory: Memory = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        order = propagation_order(num_frames, list(prompts))
        if self._key_cache() is not None:  # eval without gradients
            yield from self._lockstep(get, prompts, order, num_frames, num_objects)
            return
        if batch_prompted:
            cond = [t for t, is_cond, _ in order if is_cond]
            outs = self.step_prompted({t: prompts[t] for t in cond}, [get(t) for t in cond], num_objects,
                                      memory, num_frames)
            yield from zip(cond, outs, strict=True)
            order = [o for o in order if not o[1]]
        for t, is_cond, reverse in order:
            out = self.step(t, get(t), num_objects, prompts[t] if is_cond else None, memory,
                            num_frames, reverse)
            yield t, out

    def _lockstep(self, get: Callable[[int], FrameFeatures], prompts: dict[int, ObjectPrompts],
                  order: list[tuple[int, bool, bool]], num_frames: int, k: int
                  ) -> Iterator[tuple[int, FrameOutput]]:
        """Eval: the reverse sweep in lockstep behind the forward one, the same outputs as in
        :func:`propagation_order`'s order.

        A reverse slice reads no forward slice farther than ``reach`` above it (object pointers:
        ``max_obj_ptrs_in_encoder``; memories: ``num_maskmem`` strides), so it may run as soon as
        the forward sweep is past that, beside the forward slice then due (neither reads the
        other). Forward slices must not see reverse ones (in SAM2's order they do not exist yet):
        they read a memory of the prompted and forward slices only, the reverse sweep one with all.
        Each direction caches its own keys. Paired only where both read as many memory tokens: in
        a 100-slice volume prompted in the middle, 18 of 99 passes (none in 24 slices).
        """
        m = self.model
        forward: Memory = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        for t, is_cond, _ in order:
            if is_cond:
                yield t, self.step(t, get(t), k, prompts[t], forward, num_frames)
        backward: Memory = {bank: dict(frames) for bank, frames in forward.items()}
        reach = max(m.max_obj_ptrs_in_encoder, m.num_maskmem * max(1, m.memory_temporal_stride_for_eval)) + 1
        ahead = [t for t, is_cond, reverse in order if not is_cond and not reverse]
        behind = [t for t, is_cond, reverse in order if reverse]
        keys = (self._key_cache(), self._key_cache())
        while ahead or behind:
            steps: list[tuple[int, bool, Memory, KeyCache | None]] = []
            if ahead:
                steps.append((ahead.pop(0), False, forward, keys[0]))
            if behind and (not steps or steps[0][0] > behind[0] + reach):
                steps.append((behind.pop(0), True, backward, keys[1]))
            for t, out in self._step_pair(steps, get, k, num_frames):
                if t in forward["non_cond_frame_outputs"]:
                    backward["non_cond_frame_outputs"][t] = forward["non_cond_frame_outputs"][t]
                yield t, out

    def _key_cache(self) -> KeyCache | None:
        """A cache of the memory frames' keys for one propagation: in eval without gradients (the
        weights stay as they are), with the eval memory attention and the rank-64 value path."""
        m = self.model
        attention = m.memory_attention
        low_rank = all(isinstance(lay.cross_attn_image, LowRankValueAttention) for lay in attention.layers)
        if m.training or torch.is_grad_enabled() or m.num_maskmem == 0 \
                or not isinstance(attention, EvalMemoryAttention) or not low_rank:
            return None
        return KeyCache(attention, m.maskmem_tpos_enc)


def _remember(frames: list[int], memories: list[Memory], is_cond: bool, k: int, outs: tuple
              ) -> list[FrameOutput]:
    """Store each slice's memory (k rows each of :meth:`VideoPropagator._finish`'s ``outs``) in its
    ``memories`` entry; the slices' outputs."""
    bank = "cond_frame_outputs" if is_cond else "non_cond_frame_outputs"
    if len(frames) > 1:  # each output cut into the slices' rows by one split
        outs = [list(zip(*(p.split(k) for p in o), strict=True)) if isinstance(o, list) else o.split(k)
                for o in outs]
    results = []
    for i, (t, memory) in enumerate(zip(frames, memories, strict=True)):
        low, high, multi, ious, ptr, score, from_decoder, mem_feats, mem_pos = outs if len(frames) == 1 \
            else (o[i] for o in outs)
        # the memory's positional encoding is the same for every object: keep one row (it is one
        # already where the encoder expands a shared map)
        mem_pos = [p if p.stride(0) == 0 else p[:1].clone().expand_as(p) for p in mem_pos]
        memory[bank][t] = {"maskmem_features": mem_feats, "maskmem_pos_enc": mem_pos, "obj_ptr": ptr}
        results.append(FrameOutput(low, high, score, from_decoder, is_cond, multi, ious))
    return results


def _train_heads(m: torch.nn.Module, backbone_features: Tensor, point_inputs: dict[str, Tensor] | None = None,
                 high_res_features: list[Tensor] | None = None, multimask_output: bool = False) -> tuple:
    """Meta's ``SAM2Base._forward_sam_heads`` without a mask prompt, for training: the same outputs
    (the tests hold it to Meta's, gradients included) with fewer ops around the decoder: the empty
    prompt and the row index made once per size, the best of several masks taken by one index per
    output, the no-object pointer mixed in by one ``lerp``."""
    b, device = backbone_features.size(0), backbone_features.device
    if point_inputs is not None:
        coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
    else:  # Meta's empty prompt: one point (0, 0) with label -1
        coords, labels = cached_constant(m, ("empty", b, device),
                                         lambda: (torch.zeros(b, 1, 2, device=device),
                                                  torch.full((b, 1), -1, dtype=torch.int32, device=device)))
    sparse, dense = m.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    low_multi, ious, tokens, score = m.sam_mask_decoder(
        image_embeddings=backbone_features, image_pe=m.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask_output,
        repeat_image=False, high_res_features=high_res_features)
    if m.pred_obj_scores:
        appearing = score > 0  # a hard choice for the masks, as Meta's
        absent_logit = cached_constant(m, ("no_obj", device),
                                       lambda: torch.full((), NO_OBJ_SCORE, device=device))
        low_multi = torch.where(appearing.view(b, 1, 1, 1), low_multi, absent_logit)
    low_multi = low_multi.float()
    high_multi = F.interpolate(low_multi, size=(m.image_size, m.image_size), mode="bilinear",
                               align_corners=False)
    if multimask_output:  # the mask (and, with several tokens, the pointer token) of the best IoU
        best = ious.argmax(dim=-1, keepdim=True)  # (B, 1)
        rows = cached_constant(m, ("rows", b, device),
                               lambda: torch.arange(b, device=device).unsqueeze(1))
        low, high = low_multi[rows, best], high_multi[rows, best]
        token = tokens[rows, best].squeeze(1) if tokens.size(1) > 1 else tokens[:, 0]
    else:
        low, high, token = low_multi, high_multi, tokens[:, 0]
    ptr = m.obj_ptr_proj(token)
    if m.pred_obj_scores:
        lam = score.sigmoid() if m.soft_no_obj_ptr else appearing.float()
        if m.fixed_no_obj_ptr:  # lam ptr + (1 - lam) no_obj_ptr (exact where lam is 0 or 1)
            ptr = torch.lerp(m.no_obj_ptr, ptr.to(m.no_obj_ptr.dtype), lam)
        else:
            ptr = ptr + (1 - lam) * m.no_obj_ptr
    return low_multi, high_multi, ious, low, high, ptr, score


def _train_memory(m: torch.nn.Module, current_vision_feats: list[Tensor], feat_sizes: list[tuple[int, int]],
                  pred_masks_high_res: Tensor, object_score_logits: Tensor, is_mask_from_pts: bool
                  ) -> tuple[Tensor, list[Tensor]]:
    """Meta's ``SAM2Base._encode_new_memory`` in training (no mask binarising, no overlap constraint):
    the same memory, the no-object embedding added by one broadcast ``addcmul`` (Meta expands it to
    the features' full size first)."""
    x = current_vision_feats[-1]
    b, c, (h, w) = x.size(1), m.hidden_dim, feat_sizes[-1]
    mask = torch.sigmoid(pred_masks_high_res)
    if m.sigmoid_scale_for_mem_enc != 1.0:
        mask = mask * m.sigmoid_scale_for_mem_enc
    if m.sigmoid_bias_for_mem_enc != 0.0:
        mask = mask + m.sigmoid_bias_for_mem_enc
    out = m.memory_encoder(x.permute(1, 2, 0).view(b, c, h, w), mask, skip_mask_sigmoid=True)
    feats = out["vision_features"]
    if m.no_obj_embed_spatial is not None:
        absent = 1 - (object_score_logits > 0).float()
        feats = torch.addcmul(feats, absent.view(b, 1, 1, 1), m.no_obj_embed_spatial.view(1, -1, 1, 1)
                              ).to(feats.dtype)  # Meta adds in place: the features keep their dtype
    return feats, out["vision_pos_enc"]




def _fill_holes(low_res: Tensor) -> Tensor:
    """Meta's ``fill_holes_in_mask_scores`` with its predictor's area (a warning and no change
    where the CUDA extension ``sam2._C`` is not built, as in Meta's code)."""
    from sam2.utils.misc import fill_holes_in_mask_scores

    return fill_holes_in_mask_scores(low_res, META_FILL_HOLE_AREA)


def _uncached_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast as it is, minus its cache of weights cast to bf16/fp16.

    Selective checkpointing matches the recompute's ops to the forward's by call order. The
    cache, filled by earlier slices in the forward and empty when the recompute re-enters
    autocast, would make the recompute cast weights that the forward took from it.
    """
    if not torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.get_autocast_dtype(device.type), cache_enabled=False)


def _save_seeded_ops(ctx: object, op: torch._ops.OpOverload, *args: object, **kwargs: object
                     ) -> CheckpointPolicy:
    """Selective checkpointing: keep the outputs of ops that draw random numbers, recompute the rest.

    The fused attention kernels are tagged ``nondeterministic_seeded`` (they take dropout's
    seed), so keeping them skips the memory attention's big matmuls in the recompute: about
    16 of 84 TFLOP per 8-slice 1024 px clip with 13 organs. Dropout (``native_dropout``, seeded
    too) is kept with them: a recompute that skipped a seeded kernel would otherwise draw the next
    dropout mask from a shifted random stream. The memory attention's training path
    (:class:`~medsam2_hpc.models.memory_attention.TrainMemoryAttention`) issues that same op on the
    CPU and composes its attention with dropout around it there, so on the CPU as on the GPU the
    recompute keeps every dropout of the region and draws nothing. ``F.dropout``'s own CPU form
    (elsewhere) fills a mask in place (``bernoulli_``), which cannot be cached; it is recomputed from
    the restored random state, exact because the CPU's fused attention draws nothing.
    """
    tags = op.tags
    if torch.Tag.nondeterministic_seeded in tags and torch.Tag.inplace not in tags:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


_SAVE_SEEDED = functools.partial(create_selective_checkpoint_contexts, _save_seeded_ops)


class _RowSharedConv2d(torch.nn.Conv2d):
    """A Conv2d that, in eval, runs once for a batch of one row expanded over the objects.

    The memory encoder's ``pix_feat_proj`` sees the slice's image features expanded (a view with
    batch stride 0) over the K objects: K identical convolutions. Training keeps the per-row path,
    so its gradients stay as they were.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training and x.shape[0] > 1 and x.stride(0) == 0:
            return super().forward(x[:1]).expand(x.shape[0], -1, -1, -1)
        return super().forward(x)


def _share_expanded_rows(model: torch.nn.Module) -> None:
    """Swap the classes of the memory encoder's ``pix_feat_proj`` to :class:`_RowSharedConv2d` and of
    the memory attention to :class:`~.memory_attention.EvalMemoryAttention` (same parameters
    and state-dict keys; Meta's package is not modified): in eval both compute once what the
    objects' shared image features give them all."""
    proj = getattr(getattr(model, "memory_encoder", None), "pix_feat_proj", None)
    if type(proj) is torch.nn.Conv2d:
        proj.__class__ = _RowSharedConv2d
    use_eval_shortcuts(model)


def _cat_batch(parts: list[Tensor]) -> Tensor:
    """Slices' (HW, 1, C) features side by side as (HW, P, C); one slice stays as it is (no copy)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _per_object(x: Tensor, k: int, dim: int) -> Tensor:
    """Each of ``x``'s entries along ``dim`` repeated for ``k`` objects: a view for one slice (rows
    sharing memory, which :class:`_RowSharedConv2d` relies on), a copy for several."""
    if x.shape[dim] == 1:
        return x.expand(*x.shape[:dim], k, *x.shape[dim + 1:])
    return x.repeat_interleave(k, dim=dim)


def merge_prompts(prompts: Sequence[ObjectPrompts]) -> ObjectPrompts:
    """Several slices' prompts as one :class:`ObjectPrompts` of all their objects, slice by slice.

    Point lists are padded with label -1 to the longest (a group reads only its first n points).
    The groups come from the slices' own (host work done when they were made), so merging in
    the training step reads nothing back from the device.
    """
    if len(prompts) == 1:
        return prompts[0]
    k = prompts[0].use_mask.shape[0]
    masks = coords = labels = None
    if any(p.masks is not None for p in prompts):
        like = next(p.masks for p in prompts if p.masks is not None)
        masks = torch.cat([like.new_zeros(like.shape) if p.masks is None else p.masks for p in prompts])
    if any(p.point_coords is not None for p in prompts):
        like = next(p.point_coords for p in prompts if p.point_coords is not None)
        n = max(p.point_coords.shape[1] for p in prompts if p.point_coords is not None)
        coords = torch.cat([like.new_zeros(k, n, 2) if p.point_coords is None
                            else _padded(p.point_coords, (0, 0, 0, n - p.point_coords.shape[1]), 0)
                            for p in prompts])
        labels = torch.cat([torch.full((k, n), -1, dtype=torch.int32) if p.point_labels is None
                            else _padded(p.point_labels, (0, n - p.point_labels.shape[1]), -1)
                            for p in prompts])
    groups: dict[tuple[str, int], list[Tensor]] = {}  # each slice's groups, offset to its rows
    for i, p in enumerate(prompts):
        for idx, kind, n in p.groups():
            groups.setdefault((kind, n), []).append(idx + i * k)
    plan = [(torch.cat(groups[key]), *key) for key in sorted(groups, key=lambda g: (g[0] != "mask", g[1]))]
    return ObjectPrompts(torch.cat([p.use_mask for p in prompts]), masks, coords, labels, plan)


def _padded(x: Tensor, pad: tuple[int, ...], value: int) -> Tensor:
    """``F.pad(x, pad, value=value)``, or ``x`` itself where there is nothing to pad (no op)."""
    return F.pad(x, pad, value=value) if any(pad) else x


def _scatter(k: int, parts: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Put per-group rows back in object order (keeps autograd through index_copy)."""
    first = parts[0][1]
    out = first.new_zeros((k, *first.shape[1:]))
    for idx, value in parts:
        out = out.index_copy(0, idx, value.to(out.dtype))
    return out
