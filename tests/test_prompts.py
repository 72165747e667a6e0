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


def test_box_is_tight_and_jitters_as_sam2train() -> None:
    """SAM2Train's noise: each coordinate within min(0.1 x box width (29) or height (10), bound)."""
    mask = _rect()
    tight = np.array([40, 10, 69, 20])
    assert make_prompt(mask, "bbox", np.random.default_rng(0)).box.tolist() == tight.tolist()
    rng = np.random.default_rng(0)
    boxes = np.array([make_prompt(mask, "bbox", rng, jitter=0.1).box for _ in range(200)])
    reach = np.array([2.9, 1.0, 2.9, 1.0])
    assert (np.abs(boxes - tight) <= reach + 1e-5).all()
    assert (np.abs(boxes - tight).max(0) > 0.8 * reach).all()  # the whole range is used
    bounded = np.array([make_prompt(mask, "bbox", rng, jitter=0.1, jitter_max_px=2.0).box for _ in range(50)])
    assert (np.abs(bounded - tight) <= np.array([2.0, 1.0, 2.0, 1.0]) + 1e-5).all()
    corner = np.zeros((8, 8), bool)
    corner[:4, :4] = True
    for _ in range(20):  # clamped to the image
        assert make_prompt(corner, "bbox", rng, jitter=0.1).box.min() >= 0


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
