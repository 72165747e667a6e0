"""The training step's glue around SAM2's modules computes what Meta's functions compute.

In training, :class:`VideoPropagator` builds a slice's memories (``memory_read.training_memory``),
the glue around the decoder (``_train_heads``) and the new memory (``_train_memory``) in fewer ops
than Meta's ``_prepare_memory_conditioned_features``, ``_forward_sam_heads`` and
``_encode_new_memory``. Here the same clip (Hiera-T, random weights, 128 px, dropout on, the
trainer's selective recompute) runs through both, under the same seed: every output and every
parameter's gradient must agree. Configurations beyond Hiera-T's are switched on by attribute
(soft no-object pointers, pointers without the fixed gating, temporal encodings of pointers, a
spatial no-object embedding), so each branch of the glue meets Meta's.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from medsam2_hpc.losses import MultimaskLoss, make_loss
from medsam2_hpc.models import sam2_video
from medsam2_hpc.models.sam2 import build_sam2_model, set_trainable
from medsam2_hpc.models.sam2_video import VideoPropagator
from medsam2_hpc.trainers.sam2.step_3d import clip_prompts

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SIZE, FRAMES, ORGANS = 128, 5, [1, 2, 3]
CASES = {
    "hiera_t": {},
    "soft_ptr_tpos_no_obj_embed": {"soft_no_obj_ptr": True, "add_tpos_enc_to_obj_ptrs": True,
                                   "no_obj_embed_spatial": True},
    "ungated_ptr": {"fixed_no_obj_ptr": False, "no_obj_embed_spatial": True},
}


class _MetaGlue(VideoPropagator):
    """The propagator with Meta's memory read in training (the reference)."""

    def _attend(self, t, vision, pos, size, k, is_cond, memory, num_frames, reverse, keys):  # noqa: ANN001, ANN202
        return self.model._prepare_memory_conditioned_features(
            frame_idx=t, is_init_cond_frame=is_cond, current_vision_feats=[vision.expand(-1, k, -1)],
            current_vision_pos_embeds=[pos.expand(-1, k, -1)], feat_sizes=[size], output_dict=memory,
            num_frames=num_frames, track_in_reverse=reverse)


def _model(settings: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_sam2_model("sam2_hiera_t", None, image_size=SIZE, allow_random=True)
    set_trainable(model, "all-but-encoder")  # memory embeddings and pointers too
    # object scores of both signs: random heads would call every object absent
    head = model.sam_mask_decoder.pred_obj_score_head.layers[-1]
    head.bias.data.fill_(0.0)
    head.weight.data.mul_(50.0)
    for name, value in settings.items():
        if name == "no_obj_embed_spatial":
            value = torch.nn.Parameter(0.1 * torch.randn(1, model.mem_dim))  # trains: set after set_trainable
        setattr(model, name, value)
    return model.train()


def _clip() -> dict[str, torch.Tensor]:
    """Three disc organs; organ 3 is missing from prompt slice 4 (an empty-mask prompt there)."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    label = torch.zeros(FRAMES, SIZE, SIZE, dtype=torch.long)
    for organ, (cy, cx) in zip(ORGANS, [(30, 30), (40, 90), (95, 60)], strict=True):
        label[:, (yy - cy) ** 2 + (xx - cx) ** 2 <= 18 ** 2] = organ
    label[4][label[4] == 3] = 0
    return {"image": torch.rand(FRAMES, 3, SIZE, SIZE, generator=gen), "label": label}


def _run(model: torch.nn.Module, clip: dict[str, torch.Tensor], propagator: type[VideoPropagator],
         organs: list[int]) -> tuple[dict, dict[str, torch.Tensor]]:
    prop = propagator(model, checkpoint=True)
    prompts = clip_prompts(clip["label"], organs, "bbox", 4, np.random.default_rng(0), torch.device("cpu"))
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # dropout: both draw the same masks in the same order
    outs = dict(prop.propagate(prop.encode(clip["image"]), prompts, FRAMES, len(organs), batch_prompted=True))
    truth = (clip["label"][:, None] == torch.tensor(organs).view(1, -1, 1, 1)).flatten(0, 1)
    masks = torch.stack([outs[t].multimasks[:, :1] for t in range(FRAMES)]).flatten(0, 1)
    ious = torch.stack([outs[t].ious[:, :1] for t in range(FRAMES)]).flatten(0, 1)
    scores = torch.stack([outs[t].object_score[:, 0] for t in range(FRAMES)]).flatten()
    weight = torch.stack([outs[t].from_decoder for t in range(FRAMES)]).flatten().float()
    loss = MultimaskLoss(make_loss("bce"))(masks, ious, scores, truth, weight)["loss"]
    loss.backward()
    return outs, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("organs", [ORGANS, ORGANS[:2]], ids=["mixed_prompts", "boxes_only"])
@pytest.mark.parametrize("case", CASES)
def test_training_glue_gives_metas_outputs_and_gradients(case, organs, monkeypatch):
    clip = _clip()
    ours, grads = _run(_model(CASES[case]), clip, VideoPropagator, organs)
    monkeypatch.setattr(sam2_video, "_train_heads", lambda m, *a, **kw: m._forward_sam_heads(*a, **kw))
    monkeypatch.setattr(sam2_video, "_train_memory", lambda m, **kw: m._encode_new_memory(**kw))
    metas, meta_grads = _run(_model(CASES[case]), clip, _MetaGlue, organs)
    scores = torch.cat([o.object_score for o in metas.values()])
    assert (scores > 0).any() and (scores < 0).any()  # both branches of the object gating ran
    for t, meta in metas.items():
        for field in ("low_res", "high_res", "object_score", "from_decoder", "multimasks", "ious"):
            torch.testing.assert_close(getattr(ours[t], field), getattr(meta, field), msg=f"{t} {field}")
    assert grads.keys() == meta_grads.keys()
    assert "maskmem_tpos_enc" in grads and "no_obj_ptr" in grads  # the memory read and gating carry them
    # fp32 sums in another order (index_select's backward, broadcasts for expands); the absolute term
    # is for gradients that are zero but for rounding (attention key biases: ~1e-7 of noise)
    for name, grad in meta_grads.items():
        error = torch.linalg.vector_norm(grads[name] - grad)
        assert error <= 1e-4 * torch.linalg.vector_norm(grad) + 1e-6, (name, float(error))
