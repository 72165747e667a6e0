"""Mask <-> YOLO polygon labels: round trips on hand-drawn shapes, files Ultralytics reads."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import yaml
from ultralytics.data.utils import polygon2mask

from medsam2_hpc.errors import InputError
from medsam2_hpc.trainers.baselines.yolo_labels import (
    export_dataset,
    label_rows,
    mask_to_polygons,
    write_dataset_yaml,
)


def _shapes(size: int = 128) -> np.ndarray:
    """A ring (one hole), a box with two holes, a separate disc and a lone pixel."""
    m = np.zeros((size, size), np.uint8)
    cv2.circle(m, (40, 40), 25, 1, -1)
    cv2.circle(m, (40, 40), 10, 0, -1)
    cv2.rectangle(m, (75, 75), (120, 115), 1, -1)
    cv2.rectangle(m, (85, 85), (97, 100), 0, -1)
    cv2.rectangle(m, (103, 82), (113, 95), 0, -1)
    cv2.circle(m, (100, 30), 8, 1, -1)
    m[5, 120] = 1
    return m.astype(bool)


def _ultralytics_masks(rows: list[str], shape: tuple[int, int]) -> dict[int, np.ndarray]:
    """Class masks as Ultralytics reads the rows: each row (one instance) scaled by (w, h) and
    filled by its own ``polygon2mask`` (at mask_ratio 1), instances of a class joined."""
    h, w = shape
    out: dict[int, np.ndarray] = {}
    for row in rows:
        cls, *coords = row.split()
        xy = np.asarray(coords, float).reshape(-1, 2) * [w, h]
        filled = polygon2mask(shape, [xy.reshape(-1)]).astype(bool)
        out[int(cls)] = out.get(int(cls), np.zeros(shape, bool)) | filled
    return out


# Tolerance: none, but for a one-pixel component, written as a 1-pixel square around its centre,
# which Ultralytics fills as 2 x 2 pixels (3 extra). Every other pixel comes back exactly.
LONE_PIXEL_EXTRA = 3


def test_round_trip_keeps_holes_and_components():
    mask = _shapes()
    assert len(mask_to_polygons(mask)) == 4  # ring, box, disc, pixel: one polygon per component
    rows = label_rows({0: mask})
    assert len(rows) == 4
    back = _ultralytics_masks(rows, mask.shape)[0]
    assert not (mask & ~back).any()  # nothing lost: holes' rims, right and bottom edges included
    assert (back & ~mask).sum() <= LONE_PIXEL_EXTRA
    assert not back[40, 40] and not back[92, 91] and not back[88, 108]  # the three holes stay empty
    assert back[5, 120]  # a one-pixel component survives


def test_label_rows_normalised_and_round_trip_per_class():
    mask = _shapes()
    other = np.zeros_like(mask)
    other[60:70, 10:30] = True
    rows = label_rows({0: mask, 3: other})
    values = np.array([float(v) for r in rows for v in r.split()[1:]])
    assert values.min() >= 0.0 and values.max() <= 1.0
    assert {r.split()[0] for r in rows} == {"0", "3"}
    back = _ultralytics_masks(rows, mask.shape)
    assert (back[0] ^ mask).sum() <= LONE_PIXEL_EXTRA and np.array_equal(back[3], other)


def test_empty_mask_gives_no_rows():
    assert label_rows({0: np.zeros((32, 32), bool)}) == []


def test_export_dataset_writes_pngs_labels_and_yaml(tmp_path):
    target = torch.zeros(1, 32, 32)
    target[0, 8:24, 8:24] = 1.0
    items = [{"image": torch.rand(3, 32, 32), "target": target, "name": f"case{i}"} for i in range(2)]
    path = export_dataset(tmp_path / "yolo_data", {"train": items, "val": items[:1]}, ("cup",), True,
                          lambda im: (im.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    data = yaml.safe_load(path.read_text())
    assert data["names"] == {0: "cup"} and data["train"] == "images/train" and data["val"] == "images/val"
    assert sorted(p.name for p in (tmp_path / "yolo_data" / "images" / "train").iterdir()) == \
        ["case0.png", "case1.png"]
    rows = (tmp_path / "yolo_data" / "labels" / "val" / "case0.txt").read_text().splitlines()
    assert rows and all(r.startswith("0 ") for r in rows)


def test_label_maps_become_organ_id_minus_one(tmp_path):
    label = torch.zeros(32, 32, dtype=torch.long)
    label[4:12, 4:12], label[20:28, 20:28] = 1, 6
    export_dataset(tmp_path, {"train": [{"image": torch.zeros(3, 32, 32), "target": label, "name": "s"}]},
                   ("spleen",) * 13, False, lambda im: np.zeros((32, 32, 3), np.uint8))
    assert sorted(r.split()[0] for r in (tmp_path / "labels" / "train" / "s.txt").read_text().splitlines()) \
        == ["0", "5"]


def test_unwritable_dataset_yaml_is_input_error(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    with pytest.raises(InputError, match="dataset YAML cannot be written"):
        write_dataset_yaml(blocker, {0: "cup"}, {"train": "images/train"})
