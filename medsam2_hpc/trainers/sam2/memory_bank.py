"""The 2D memory bank: earlier images' SAM2 memories condition the current image's features.

Medical-SAM2's 2D recipe keeps up to 16 memories of earlier images and lets SAM2's memory
attention read them. Ours is deliberately simple: one FIFO bank per class (object), filled
with detached memories of the last ``size`` images, emptied at the start of every pass, so an
evaluation depends only on the weights and the order of the cases (never on training history).
With ``size`` 0 the features get SAM2's learned ``no_mem_embed``, as SAM2's image predictor does.
"""

from __future__ import annotations

import torch

from medsam2_hpc.trainers.sam2.common import Features, tokens_to_map

__all__ = ["MemoryBank"]


class MemoryBank:
    """Per-class FIFO of (memory features, memory position) maps, each [1, 64, h, w]."""

    def __init__(self, size: int, n_classes: int) -> None:
        self.size = size
        self.entries: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(n_classes)]

    def __len__(self) -> int:
        return len(self.entries[0]) if self.entries else 0

    def condition(self, model: torch.nn.Module, feats: Features, n_classes: int) -> torch.Tensor:
        """Stride-16 image embedding [B*C, 256, h, w] for every (image, class), memory-conditioned."""
        tokens, pos = feats.tokens[-1], feats.pos[-1]  # [HW, B*C, 256]
        if self.size == 0 or len(self) == 0:
            return tokens_to_map(tokens + model.no_mem_embed, feats.sizes[-1])
        # memory of item (b, c) = all entries of class c; the last temporal slot marks "no time offset"
        tpos = model.maskmem_tpos_enc[model.num_maskmem - 1]  # [1, 1, 64]
        memory, memory_pos = [], []
        for i in range(tokens.shape[1]):
            entries = self.entries[i % n_classes]
            memory.append(torch.cat([m.flatten(2).permute(2, 0, 1) for m, _ in entries]))
            memory_pos.append(torch.cat([p.flatten(2).permute(2, 0, 1) + tpos for _, p in entries]))
        out = model.memory_attention(curr=[tokens], curr_pos=[pos], memory=torch.cat(memory, 1),
                                     memory_pos=torch.cat(memory_pos, 1), num_obj_ptr_tokens=0)
        return tokens_to_map(out, feats.sizes[-1])

    @torch.no_grad()
    def add(self, model: torch.nn.Module, feats: Features, high_res_logits: torch.Tensor,
            object_scores: torch.Tensor, n_classes: int) -> None:
        """Encode each (image, class) prediction [B*C, 1, S, S] into a memory and append it."""
        if self.size == 0:
            return
        mem, mem_pos = model._encode_new_memory(
            current_vision_feats=[t.detach() for t in feats.tokens], feat_sizes=feats.sizes,
            pred_masks_high_res=high_res_logits.detach(), object_score_logits=object_scores.detach(),
            is_mask_from_pts=True)
        for i in range(mem.shape[0]):
            bank = self.entries[i % n_classes]
            bank.append((mem[i:i + 1].detach(), mem_pos[-1][i:i + 1].detach()))
            del bank[:-self.size]
