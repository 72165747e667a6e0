"""Data and scoring shared by the 2D baselines (ResNet, YOLO), so both see exactly what SAM2 sees.

Both baselines train on the same loaders and splits as the SAM2 trainers (``RefugeDataset``,
``BTCVVolumes`` + ``BTCVSlices``) and are scored by the same code (``metrics.dice``,
``metrics.volume_scores``). A baseline only supplies ``predict(images [B,3,S,S]) -> scores
[B,K,S,S]`` in [0, 1]; everything from resizing back to the ground truth's size to
metrics.json numbers happens here, once.

A dataset is read through its registry entry's loader: 2D images (REFUGE: multi-label masks, one
sigmoid channel per class) or volumes (BTCV: label maps, softmax over background + classes, scored
per volume). REFUGE has train and test splits only; validation (choosing ``best.pt``) uses the test
split, as Medical-SAM2 and the SAM2 2D trainer do. BTCV validates on its "val" split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from medsam2_hpc import metrics
from medsam2_hpc.atomic import atomic_write
from medsam2_hpc.data import btcv, decode_first
from medsam2_hpc.data.images import resize_image
from medsam2_hpc.engine.loop import progress
from medsam2_hpc.errors import InputError
from medsam2_hpc.precheck import once
from medsam2_hpc.registry import dataset_kind, load_entry

__all__ = ["BaselineData", "Scores", "Predict", "check_data", "load_data", "to_uint8_rgb"]

Predict = Callable[[torch.Tensor], torch.Tensor]  # [B,3,S,S] in [0,1] -> [B,K,S,S] scores in [0,1]


@dataclass
class Scores:
    """What an evaluation yields for contract.build_metrics (``extra`` holds dice_mean_per_slice)."""

    dice_mean: float
    per_class: dict[str, float]
    per_case: dict[str, dict[str, float]]
    hd95_mean: float | None
    extra: dict[str, Any]


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
                 classes: list[str] | None = None) -> None:
        self.dataset, self.root, self.image_size = dataset, root, int(image_size)
        self.out_size = int(out_size or image_size)
        kind = dataset_kind(dataset)
        self._load = load_entry(kind.loader)
        self.multilabel = not kind.volumetric  # 2D images: one mask per class; volumes: label maps
        if self.multilabel:
            train = self._load(root, "train", self.image_size, self.image_size, classes)
            self.class_names: tuple[str, ...] = tuple(train.classes)
            self.train = _Targets(train, "mask")
            test = self._load(root, "test", self.image_size, self.image_size, classes)
            self.val = _Targets(test, "mask")
        else:
            self.class_names = kind.classes
            self._volumes = self._load(root)
            self.train = _Targets(btcv.BTCVSlices(self._volumes["train"], self.image_size), "label")
            self.val = _Targets(btcv.BTCVSlices(self._volumes["val"], self.image_size), "label")
        if len(self.train) == 0:
            raise InputError(f"{root}: the {dataset} training split has no labelled images")

    @property
    def scored_split(self) -> str:
        """The split behind the final scores: REFUGE's test; BTCV's test, or val when test is unlabelled."""
        return "test" if self.multilabel else self._volumes["test"].split

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
        split = "test" if split == "val" else split  # REFUGE has no val split (module docstring)
        data = self._load(self.root, split, self.image_size, self.out_size, list(self.class_names))
        per_case: dict[str, dict[str, float]] = {}
        dists: list[float] = []
        for start in progress(range(0, len(data), batch_size), f"eval {split}"):
            items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
            scores = predict(torch.stack([it["image"] for it in items]))
            scores = F.interpolate(scores.float(), size=(self.out_size,) * 2, mode="bilinear",
                                   align_corners=False)
            for item, score in zip(items, scores, strict=True):
                pred, truth = score >= 0.5, item["mask"].bool()
                per_case[item["name"]] = {c: metrics.dice(pred[k], truth[k])
                                          for k, c in enumerate(self.class_names)}
                if hd95:
                    dists += [metrics.hd95(pred[k], truth[k]) for k in range(len(self.class_names))]
                if out_dir is not None:
                    for k, c in enumerate(self.class_names):
                        png = pred[k].numpy().astype(np.uint8) * 255
                        _write_png(out_dir / f"{item['name']}_{c}.png", png)
        per_class, mean = metrics.summarise(per_case)
        return Scores(mean, per_class, per_case, _nanmean(dists) if hd95 else None, {})

    def _evaluate_volumes(self, predict: Predict, out_dir: Path | None, batch_size: int, hd95: bool,
                       split: str) -> Scores:
        volumes = self._volumes[split]
        per_case: dict[str, dict[str, float]] = {}
        per_slice: dict[str, dict[str, float]] = {}
        dists: list[float] = []
        labels = dict(enumerate(self.class_names, 1))  # label value -> class (0: background)
        for vol in progress((volumes[i] for i in range(len(volumes))), f"eval {split}", total=len(volumes)):
            if vol.label is None:
                raise InputError(f"{self.root}: {self.dataset.upper()} {split} case {vol.case} has no label "
                                 "map to score")
            label = self.predict_volume(predict, vol.image, batch_size)
            scores = metrics.volume_scores(label, vol.label, labels, vol.spacing, hd95=hd95)
            per_case[vol.case], per_slice[vol.case] = scores["dice"], scores["per_slice"]
            dists += [v for v in scores["hd95"].values() if not math.isnan(v)]
            if out_dir is not None:
                btcv.write_prediction(vol, label, out_dir)
        per_class, mean = metrics.summarise(per_case)
        _, mean_per_slice = metrics.summarise(per_slice)
        return Scores(mean, per_class, per_case, _nanmean(dists) if hd95 else None,
                      {"dice_mean_per_slice": mean_per_slice})

    def predict_volume(self, predict: Predict, image: np.ndarray, batch_size: int) -> np.ndarray:
        """Slice by slice at the model size, scores resized back to (H, W), argmax, stacked (D,H,W)."""
        depth, h, w = image.shape
        out = np.zeros((depth, h, w), np.uint8)
        for start, batch in _slice_batches(image, self.image_size, batch_size):
            scores = F.interpolate(predict(batch).float(), size=(h, w), mode="bilinear", align_corners=False)
            out[start:start + len(batch)] = scores.argmax(1).numpy().astype(np.uint8)
        return out


def check_data(task: Any, classes: list[str] | None = None) -> None:
    """Pre-flight before anything is written: layout found, no split empty, and the first item of
    each split decoded (a corrupt file fails now, not after the run directory is made).

    Once per dataset (not per task) while a study is checked before queueing.
    """
    key = ("baseline-data", task.dataset, task.data_path, tuple(classes or ()))
    once(key, lambda: _check_data(task, classes))


def _check_data(task: Any, classes: list[str] | None) -> None:
    kind = dataset_kind(task.dataset)
    load = load_entry(kind.loader)
    if kind.volumetric:
        splits = load(task.data_path)
    else:
        splits = {split: load(task.data_path, split, image_size=64, out_size=64, classes=classes)
                  for split in kind.splits}
    decode_first(splits, task.data_path)


def load_data(task: Any, image_size: int, out_size: int | None = None,
              classes: list[str] | None = None) -> BaselineData:
    return BaselineData(task.dataset, task.data_path, image_size, out_size=out_size, classes=classes)


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


def _nanmean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None
