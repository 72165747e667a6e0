"""Prompt sampling: (x, y) clicks inside the object, enclosing boxes, seeded, explicit absence."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medsam2_hpc.data.prompts import make_prompt, make_prompts
from medsam2_hpc.errors import InputError


def _rect() -> np.ndarray:
    """A wide, off-centre rectangle: rows 10..20, columns 40..69, so (x, y) != (row, col)."""
    mask = np.zeros((64, 96), bool)
    mask[10:21, 40:70] = True
    return mask


def test_single_pixel_gives_that_pixel_as_x_y() -> None:
    mask = np.zeros((8, 8), bool)
    mask[2, 5] = True  # row 2, column 5
    click = make_prompt(mask, "click", np.random.default_rng(0))
    assert click.present and click.points.tolist() == [[5.0, 2.0]] and click.point_labels.tolist() == [1]
    box = make_prompt(mask, "bbox", np.random.default_rng(0))
    assert box.box.tolist() == [5.0, 2.0, 5.0, 2.0]


def test_positive_clicks_lie_well_inside_the_object() -> None:
    mask = _rect()
    prompt = make_prompt(mask, "click", np.random.default_rng(3), n_pos=5)
    depth = ndimage.distance_transform_edt(mask)
    assert prompt.points.shape == (5, 2) and prompt.points.dtype == np.float32
    for x, y in prompt.points.astype(int):
        assert mask[y, x] and depth[y, x] >= 0.5 * depth.max()


def test_negative_clicks_lie_outside() -> None:
    mask = _rect()
    prompt = make_prompt(mask, "click", np.random.default_rng(1), n_pos=2, n_neg=3)
    assert prompt.point_labels.tolist() == [1, 1, 0, 0, 0]
    inside = [bool(mask[y, x]) for x, y in prompt.points.astype(int)]
    assert inside == [True, True, False, False, False]


def test_object_filling_the_image_gets_no_negative_clicks() -> None:
    prompt = make_prompt(np.ones((4, 4), bool), "click", np.random.default_rng(0), n_neg=2)
    assert prompt.point_labels.tolist() == [1]


def test_box_is_tight_and_jittered_boxes_stay_in_the_image() -> None:
    mask = _rect()
    assert make_prompt(mask, "bbox", np.random.default_rng(0)).box.tolist() == [40, 10, 69, 20]
    rng = np.random.default_rng(0)
    boxes = [make_prompt(mask, "bbox", rng, jitter=0.5).box for _ in range(50)]
    assert any(not np.array_equal(b, [40, 10, 69, 20]) for b in boxes)
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 <= x1 <= 95 and 0 <= y0 <= y1 <= 63


def test_same_seed_same_prompts() -> None:
    mask = _rect()

    def draw(seed: int) -> list:
        rng = np.random.default_rng(seed)
        return [make_prompt(mask, "click", rng, n_pos=3, n_neg=2).points.tolist(),
                make_prompt(mask, "bbox", rng, jitter=0.1).box.tolist()]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_absent_object_is_explicit_and_never_nan() -> None:
    for kind in ("click", "bbox", "mask"):
        prompt = make_prompt(np.zeros((16, 16), bool), kind, np.random.default_rng(0), jitter=0.2)
        assert prompt.present is False and prompt.kind == kind
        assert (prompt.points, prompt.point_labels, prompt.box, prompt.mask) == (None, None, None, None)


def test_mask_prompt_is_the_mask() -> None:
    mask = _rect()
    prompt = make_prompt(mask.astype(np.uint8) * 255, "mask", np.random.default_rng(0))
    assert prompt.mask.dtype == np.float32 and np.array_equal(prompt.mask, mask.astype(np.float32))


def test_one_prompt_per_organ_of_a_label_map() -> None:
    label = np.zeros((32, 32), np.uint8)
    label[2:6, 20:30] = 1
    label[20:25, 3:8] = 6
    prompts = make_prompts(label, [1, 6, 11], "bbox", np.random.default_rng(0))
    assert prompts[1].box.tolist() == [20, 2, 29, 5]
    assert prompts[6].box.tolist() == [3, 20, 7, 24]
    assert prompts[11].present is False


def test_bad_arguments() -> None:
    with pytest.raises(InputError, match="prompt: 'box'"):
        make_prompt(_rect(), "box", np.random.default_rng(0))
    with pytest.raises(ValueError, match="2D"):
        make_prompt(np.ones((2, 4, 4), bool), "click", np.random.default_rng(0))
