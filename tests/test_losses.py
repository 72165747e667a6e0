"""Losses: the right values on hand-checkable inputs, bad options named, and they train."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from medsam2_hpc.errors import InputError
from medsam2_hpc.losses import MultimaskLoss, make_loss


def test_bce_pos_weight_matches_hand_value() -> None:
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    # sigmoid(0) = 0.5: each pixel costs log 2, the positive one twice
    expected = (2 * math.log(2) + 3 * math.log(2)) / 4
    assert float(make_loss("bce", pos_weight=2.0)(logits, target)) == pytest.approx(expected)
    assert float(make_loss("bce", pos_weight=1.0)(logits, target)) == pytest.approx(math.log(2))


def test_dicefocal_is_near_zero_for_a_confident_right_answer() -> None:
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :2] = 1
    good = (target * 2 - 1) * 20
    loss = make_loss("dicefocal")
    assert float(loss(good, target)) < 1e-3
    assert float(loss(-good, target)) > 0.9


@pytest.mark.parametrize("name", ["bce", "dicefocal", "sam2"])
def test_loss_falls_when_optimised(name: str) -> None:
    torch.manual_seed(0)
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:5, 2:6] = 1
    logits = torch.zeros_like(target, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.3)
    loss_fn = make_loss(name)
    first = float(loss_fn(logits, target).detach())
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn(logits, target)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first * 0.5


@pytest.mark.parametrize(("name", "weight", "match"), [
    ("dice", 2.0, "loss: 'dice' is not one of bce, dicefocal, sam2"),
    ("bce", 0.0, "pos_weight"),
    ("bce", -1, "pos_weight"),
    ("dicefocal", float("nan"), "pos_weight"),
])
def test_bad_options_are_named(name: str, weight: float, match: str) -> None:
    with pytest.raises(InputError, match=match):
        make_loss(name, pos_weight=weight)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_multimask_loss_equals_hand_computation() -> None:
    """Two objects, two proposed masks of two pixels each; object 1 is absent from the truth.

    Object 0, truth [1, 0]: mask a = [0, 0] costs BCE log 2 per pixel, mask b = [2, -2] costs
    softplus(-2) per pixel, so b is back-propagated. Real IoUs (logit > 0): a 0 (empty), b 1;
    both estimates 0.5, so the L1 IoU loss is 0.5 on each mask. Object 1 adds no mask or IoU loss
    (absent, as Meta masks them). Object scores 0 against present [1, 0]: BCE log 2 each.
    Mask and IoU terms are divided by the 2 objects.
    """
    masks = torch.tensor([[[[0.0, 0.0]], [[2.0, -2.0]]],
                          [[[3.0, 3.0]], [[1.0, 1.0]]]], requires_grad=True)  # (N=2, M=2, 1, 2)
    ious = torch.full((2, 2), 0.5, requires_grad=True)
    obj = torch.zeros(2, requires_grad=True)
    target = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
    parts = MultimaskLoss(make_loss("bce", pos_weight=1.0))(masks, ious, obj, target)
    assert float(parts["mask"]) == pytest.approx(_softplus(-2.0) / 2)
    assert float(parts["iou"]) == pytest.approx(0.5 / 2)
    assert float(parts["obj"]) == pytest.approx(math.log(2))
    assert float(parts["loss"].detach()) == pytest.approx(_softplus(-2.0) / 2 + 0.25 + math.log(2))
    parts["loss"].backward()
    assert masks.grad[0, 0].abs().sum() == 0 and masks.grad[0, 1].abs().sum() > 0  # only the lowest
    assert masks.grad[1].abs().sum() == 0  # absent object: its masks are not trained
    assert (ious.grad[0] != 0).all() and (ious.grad[1] == 0).all()  # every mask of a present object


def test_without_multimask_only_the_picked_mask_trains_and_the_iou_head_does_not() -> None:
    masks = torch.tensor([[[[0.0, 0.0]], [[2.0, -2.0]]]], requires_grad=True)
    ious = torch.tensor([[0.9, 0.1]], requires_grad=True)  # the IoU head picks mask a
    target = torch.tensor([[[1.0, 0.0]]])
    loss_fn = MultimaskLoss(make_loss("bce", pos_weight=1.0), multimask=False)
    parts = loss_fn(masks, ious, torch.zeros(1), target)
    assert float(parts["mask"]) == pytest.approx(math.log(2)) and float(parts["iou"]) == 0.0
    parts["loss"].backward()
    assert masks.grad[0, 1].abs().sum() == 0
    assert ious.grad is None


def _meta_loss_class() -> type:
    """Meta's ``training.loss_fns.MultiStepMultiMasksAndIous`` from the installed ``sam2`` wheel.

    Its module imports ``training.trainer`` for one constant (``CORE_LOSS_KEY``); that module
    needs ``tensordict``, which is not installed, so it is stood in for by a module holding
    just that constant (named here: the loss code itself is Meta's, unchanged).
    """
    stub = types.ModuleType("training.trainer")
    stub.CORE_LOSS_KEY = "core_loss"
    saved = sys.modules.get("training.trainer")
    sys.modules["training.trainer"] = stub
    try:
        from training.loss_fns import MultiStepMultiMasksAndIous
    finally:
        if saved is None:
            sys.modules.pop("training.trainer")
        else:
            sys.modules["training.trainer"] = saved
    return MultiStepMultiMasksAndIous


def test_sam2_option_is_metas_loss_with_metas_weights() -> None:
    """Meta's loss on the same outputs (weights of sam2.1_hiera_b+_MOSE_finetune.yaml), two frames.

    Meta sums over frames and divides by the objects; ours averages over (frame, object) outputs,
    so ours is Meta's over the 2 frames.
    """
    meta = _meta_loss_class()(weight_dict={"loss_mask": 20, "loss_dice": 1, "loss_iou": 1, "loss_class": 1},
                              supervise_all_iou=True, iou_use_l1_loss=True, pred_obj_scores=True,
                              focal_gamma_obj_score=0.0, focal_alpha_obj_score=-1.0)
    g = torch.Generator().manual_seed(0)
    frames, n, m, size = 2, 3, 3, 8
    masks = torch.randn(frames, n, m, size, size, generator=g) * 3
    ious = torch.rand(frames, n, m, generator=g)
    obj = torch.randn(frames, n, 1, generator=g)
    target = (torch.rand(frames, n, size, size, generator=g) > 0.6).float()
    target[1, 2] = 0  # one absent object
    outs = [{"multistep_pred_multimasks_high_res": [masks[t]], "multistep_pred_ious": [ious[t]],
             "multistep_object_score_logits": [obj[t]]} for t in range(frames)]
    want = meta(outs, target)
    ours = MultimaskLoss(make_loss("sam2"))(masks.flatten(0, 1), ious.flatten(0, 1), obj.flatten(),
                                            target.flatten(0, 1))
    assert float(ours["loss"]) == pytest.approx(float(want["core_loss"]) / frames, rel=1e-5)
    assert float(ours["iou"]) == pytest.approx(float(want["loss_iou"]) / frames, rel=1e-5)
    assert float(ours["obj"]) == pytest.approx(float(want["loss_class"]) / frames, rel=1e-5)


def test_multimask_loss_weights_leave_rows_out_as_selecting_them_does():
    torch.manual_seed(0)
    masks, ious, obj = torch.randn(6, 3, 8, 8), torch.rand(6, 3), torch.randn(6)
    target = torch.rand(6, 8, 8) > 0.6
    target[1] = False  # an absent organ among the kept rows
    keep = torch.tensor([True, True, False, True, False, True])
    loss = MultimaskLoss(make_loss("bce"))
    picked = loss(masks[keep], ious[keep], obj[keep], target[keep])
    weighted = loss(masks, ious, obj, target, keep.float())
    for name in ("loss", "mask", "iou", "obj"):
        torch.testing.assert_close(weighted[name], picked[name])
    assert loss(masks, ious, obj, target, torch.zeros(6))["loss"] == 0  # nothing to score
