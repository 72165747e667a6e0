"""Rewrites of the 3D training step that cut host ops compute what the step computed before.

Hiera-T with random weights at 128 px, train mode (dropout on), activation checkpointing on
as the trainer runs it (CPU). Each rewrite is compared with the path it replaced: loss and
every parameter's gradient equal within fp32 tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam2_hpc.losses import MultimaskLoss, make_loss
from medsam2_hpc.models.sam2_video import ObjectPrompts, VideoPropagator, merge_prompts
from medsam2_hpc.trainers.sam2.step_3d import clip_organs, clip_prompts
from tests.tiny_clips import disc_clip, tiny_sam2

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SIZE, FRAMES = 128, 4


def _model() -> torch.nn.Module:
    return tiny_sam2(SIZE)


def _clip() -> dict[str, torch.Tensor]:
    """Three disc organs; organ 3 is missing from prompt slice 2 (an empty-mask prompt there)."""
    clip = disc_clip(SIZE, FRAMES, [(30, 30), (40, 90), (95, 60)], radius=18)
    clip["label"][2][clip["label"][2] == 3] = 0
    return clip


def _loss_and_grads(model: torch.nn.Module, clip: dict[str, torch.Tensor], batch_prompted: bool
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    prop = VideoPropagator(model, checkpoint=True)
    organs = clip_organs(clip["label"][::2])
    prompts = clip_prompts(clip["label"], organs, "bbox", 2, np.random.default_rng(0), torch.device("cpu"))
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # dropout: both paths draw the same masks in the same order
    outs = dict(prop.propagate(prop.encode(clip["image"]), prompts, FRAMES, len(organs),
                               batch_prompted=batch_prompted))
    ids = torch.tensor(organs).view(1, -1, 1, 1)
    truth = (clip["label"][:, None] == ids).flatten(0, 1)
    width = max(o.multimasks.shape[1] for o in outs.values())
    masks = torch.stack([outs[t].multimasks.expand(-1, width, -1, -1) for t in range(FRAMES)]).flatten(0, 1)
    ious = torch.stack([outs[t].ious.expand(-1, width) for t in range(FRAMES)]).flatten(0, 1)
    scores = torch.stack([outs[t].object_score[:, 0] for t in range(FRAMES)]).flatten()
    weight = torch.stack([outs[t].from_decoder for t in range(FRAMES)]).flatten().float()
    loss = MultimaskLoss(make_loss("bce"))(masks, ious, scores, truth, weight)["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_prompted_slices_in_one_batch_give_the_same_loss_and_gradients():
    model, clip = _model(), _clip()
    loss_one, grads_one = _loss_and_grads(model, clip, batch_prompted=False)
    loss_all, grads_all = _loss_and_grads(model, clip, batch_prompted=True)
    torch.testing.assert_close(loss_all, loss_one, atol=1e-6, rtol=1e-5)
    assert grads_all.keys() == grads_one.keys()
    assert any(n.startswith("memory_attention") for n in grads_one)  # the memories carry gradients
    # fp32 sums in another order: elementwise differences reach 1e-6 on 5e-4 gradients with one
    # thread (1.8e-4 of the norm); a wrong merge or other dropout masks differ by the norm's order
    for name, grad in grads_one.items():
        error = torch.linalg.vector_norm(grads_all[name] - grad)
        assert error <= 1e-3 * torch.linalg.vector_norm(grad) + 1e-9, (name, float(error))


def test_merged_prompts_keep_each_slices_objects_and_kinds():
    boxes = torch.tensor([[[5.0, 5.0], [30.0, 30.0]]] * 2)
    labels = torch.tensor([[2, 3]] * 2, dtype=torch.int32)
    masks = torch.zeros(2, 1, 8, 8)
    masks[1, 0, 2:4, 2:4] = 1
    boxed = ObjectPrompts(torch.zeros(2, dtype=torch.bool), None, boxes, labels)
    mixed = ObjectPrompts(torch.tensor([False, True]), masks, boxes[:, :1], labels[:, :1])
    absent = ObjectPrompts(torch.ones(2, dtype=torch.bool), torch.zeros(2, 1, 8, 8))
    merged = merge_prompts([boxed, mixed, absent])
    assert merged.use_mask.tolist() == [False, False, False, True, True, True]
    assert torch.equal(merged.masks[3], masks[1]) and merged.masks[[0, 1, 4, 5]].sum() == 0
    assert merged.point_labels.tolist() == [[2, 3], [2, 3], [2, -1], [2, -1], [-1, -1], [-1, -1]]
    groups = {(kind, n): idx.tolist() for idx, kind, n in merged.groups()}
    assert groups == {("mask", 0): [3, 4, 5], ("points", 2): [0, 1], ("points", 1): [2]}
    assert merge_prompts([boxed]) is boxed
