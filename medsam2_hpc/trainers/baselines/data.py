"""Data and scoring shared by the 2D baselines (ResNet, YOLO), so both see exactly what SAM2 sees.

Both baselines train on the same loaders and splits as the SAM2 trainers (``RefugeDataset``,
``BTCVVolumes`` + ``BTCVSlices``) and are scored by the same code (:mod:`medsam2_hpc.scoring`).
A baseline only supplies ``predict(images [B,3,S,S]) -> scores [B,K,S,S]`` in [0, 1]; the
resize back to the ground truth's size and the scores come from scoring.py.

A dataset is read through its registry entry's loader: 2D images (REFUGE: multi-label masks, one
sigmoid channel per class) or volumes (BTCV: label maps, softmax over background + classes, scored
per volume). Validation (choosing ``best.pt``) reads the val split, the final scores the test
split, for both datasets (data/splits.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from medsam2_hpc.atomic import atomic_write
from medsam2_hpc.data import btcv
from medsam2_hpc.data.images import resize_image
from medsam2_hpc.engine.loop import progress
from medsam2_hpc.errors import InputError
from medsam2_hpc.registry import dataset_kind, load_entry
from medsam2_hpc.scoring import Scorer, Scores, resize_scores

__all__ = ["BaselineData", "Predict", "load_data", "to_uint8_rgb"]

Predict = Callable[[torch.Tensor], torch.Tensor]  # [B,3,S,S] in [0,1] -> [B,K,S,S] scores in [0,1]


class _Targets(Dataset):
    """Uniform training items: ``{"image": [3,S,S], "target": [C,S,S] float | [S,S] long, "name": str}``."""

    def __init__(self, base: Dataset, key: str) -> None:
        self.base, self.key = base, key

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.base[i]
        name = item.get("name") or f"{item['case']}_{int(item['index']):04d}"
        return {"image": item["image"], "target": item[self.key], "name": name}


class BaselineData:
    """One dataset's train/val items and its test scoring, for a given model input size."""

    def __init__(self, dataset: str, root: str, image_size: int, *, out_size: int | None = None,
                 classes: list[str] | None = None, split_file: str | None = None) -> None:
        self.dataset, self.root, self.image_size = dataset, root, int(image_size)
        self.out_size, self.split_file = int(out_size or image_size), split_file
        kind = dataset_kind(dataset)
        self._load = load_entry(kind.loader)
        self.multilabel = not kind.volumetric  # 2D images: one mask per class; volumes: label maps
        if self.multilabel:
            size = self.image_size
            train = self._load(root, "train", size, size, classes, split_file=split_file)
            self.class_names: tuple[str, ...] = tuple(train.classes)
            self.train = _Targets(train, "mask")
            val = self._load(root, "val", size, size, classes, split_file=split_file)
            self.val = _Targets(val, "mask")
        else:
            self.class_names = kind.classes
            self._volumes = self._load(root, split_file)
            self.train = _Targets(btcv.BTCVSlices(self._volumes["train"], self.image_size), "label")
            self.val = _Targets(btcv.BTCVSlices(self._volumes["val"], self.image_size), "label")
        if len(self.train) == 0:
            raise InputError(f"{root}: the {dataset} training split has no labelled images")

    @property
    def selection_cases(self) -> list[str]:
        """The val cases ``validate`` (best.pt) reads."""
        return list(self.val.base.names) if self.multilabel else self._volumes["val"].cases

    @property
    def num_outputs(self) -> int:
        """Output channels: one per class (sigmoid) for REFUGE, background + organs (softmax) for BTCV."""
        return len(self.class_names) + (0 if self.multilabel else 1)

    # ---------------------------------------------------------------- scoring
    def evaluate(self, predict: Predict, out_dir: Path | None, *, batch_size: int = 4,
                 hd95: bool = False, split: str = "test") -> Scores:
        """Score ``predict`` on ``split`` with our metrics; write predictions under ``out_dir`` if given."""
        if self.multilabel:
            return self._evaluate_images(predict, out_dir, batch_size, hd95, split)
        return self._evaluate_volumes(predict, out_dir, batch_size, hd95, split)

    def _evaluate_images(self, predict: Predict, out_dir: Path | None, batch_size: int, hd95: bool,
                         split: str) -> Scores:
        data = self._load(self.root, split, self.image_size, self.out_size, list(self.class_names),
                          split_file=self.split_file)
        scorer = Scorer(data.hd95_unit, hd95=hd95)
        for start in progress(range(0, len(data), batch_size), f"eval {split}"):
            items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
            scores = resize_scores(predict(torch.stack([it["image"] for it in items])), self.out_size)
            for item, score in zip(items, scores, strict=True):
                pred = score >= 0.5
                scorer.add(item["name"], pred, item["mask"].bool(), self.class_names)
                if out_dir is not None:
                    for k, c in enumerate(self.class_names):
                        png = pred[k].numpy().astype(np.uint8) * 255
                        _write_png(out_dir / f"{item['name']}_{c}.png", png)
        return scorer.summary()

    def _evaluate_volumes(self, predict: Predict, out_dir: Path | None, batch_size: int, hd95: bool,
                       split: str) -> Scores:
        volumes = self._volumes[split]
        scorer = Scorer(volumes.hd95_unit, hd95=hd95, per_slice=True)
        labels = dict(enumerate(self.class_names, 1))  # label value -> class (0: background)
        for vol in progress((volumes[i] for i in range(len(volumes))), f"eval {split}", total=len(volumes)):
            if vol.label is None:
                raise InputError(f"{self.root}: {self.dataset.upper()} {split} case {vol.case} has no label "
                                 "map to score")
            label = self.predict_volume(predict, vol.image, batch_size)
            scorer.add_labels(vol.case, label, vol.label, labels, vol.spacing)
            if out_dir is not None:
                btcv.write_prediction(vol, label, out_dir)
        return scorer.summary()

    def predict_volume(self, predict: Predict, image: np.ndarray, batch_size: int) -> np.ndarray:
        """Slice by slice at the model size, scores resized back to (H, W), argmax, stacked (D,H,W)."""
        depth, h, w = image.shape
        out = np.zeros((depth, h, w), np.uint8)
        for start, batch in _slice_batches(image, self.image_size, batch_size):
            scores = resize_scores(predict(batch), (h, w))
            out[start:start + len(batch)] = scores.argmax(1).numpy().astype(np.uint8)
        return out


def load_data(task: Any, image_size: int, out_size: int | None = None, classes: list[str] | None = None,
              split_file: str | None = None) -> BaselineData:
    return BaselineData(task.dataset, task.data_path, image_size, out_size=out_size, classes=classes,
                        split_file=split_file)


def _slice_batches(image: np.ndarray, size: int, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Consecutive slices as [B,3,S,S] model inputs, preprocessed like ``BTCVSlices``."""
    for start in range(0, image.shape[0], batch_size):
        x = torch.from_numpy(np.ascontiguousarray(image[start:start + batch_size], np.float32))[:, None]
        yield start, resize_image(x.repeat(1, 3, 1, 1), size)


def to_uint8_rgb(image: torch.Tensor) -> np.ndarray:
    """[3,H,W] float in [0,1] -> (H,W,3) uint8, how images are handed to PNG writers and YOLO."""
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def _write_png(path: Path, array: np.ndarray) -> None:
    img = Image.fromarray(array)
    atomic_write(path, lambda fh: img.save(fh, format="PNG"))
