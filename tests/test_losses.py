"""Losses: the right values on hand-checkable inputs, bad options named, and they train."""

from __future__ import annotations

import math

import pytest
import torch

from medsam2_hpc.errors import InputError
from medsam2_hpc.losses import make_loss


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


@pytest.mark.parametrize("name", ["bce", "dicefocal"])
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
    ("dice", 2.0, "loss: 'dice' is not one of bce, dicefocal"),
    ("bce", 0.0, "pos_weight"),
    ("bce", -1, "pos_weight"),
    ("dicefocal", float("nan"), "pos_weight"),
])
def test_bad_options_are_named(name: str, weight: float, match: str) -> None:
    with pytest.raises(InputError, match=match):
        make_loss(name, pos_weight=weight)
