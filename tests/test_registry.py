"""The registries: a model kind and a dataset added at test time, in this file alone, run through
``train.py``, ``medsam2-hpc data``, the launcher's dry run and the collector.

The toy kind is a real (if small) trainer: it fits a brightness threshold on the training images
and is scored with the project's Dice on the test images, so the numbers can be checked by hand.
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medsam2_hpc import registry
from medsam2_hpc.cli import main as cli
from medsam2_hpc.contract import RunCost, Selection, build_metrics, checkpoint_record
from medsam2_hpc.errors import InputError
from medsam2_hpc.scoring import Scorer
from medsam2_hpc.task import RunDir, Task

REPO = Path(__file__).resolve().parents[1]
TOY_MODEL = registry.ModelKind(name="toy-threshold", trainer=__name__, variants=("plain",),
                               default_variant="plain", datasets=("toyset",))
TOY_DATA = registry.DatasetKind(name="toyset", classes=("blob",), default_path="./data/toyset",
                                loader=f"{__name__}:ToyImages", layouts=("npy",),
                                synthetic=f"{__name__}:make_toy", summary=f"{__name__}:summarise_toy",
                                demo={"size": 16})


# --- the toy dataset: a bright square on a dark background, one .npy pair per case ----------


def make_toy(out: Path, layout: str, *, n_train: int, n_test: int, size: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        (out / split).mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((size, size), bool)
            y, x = rng.integers(0, size // 2, 2)
            mask[y:y + size // 2, x:x + size // 2] = True
            image = np.where(mask, 0.8, 0.2) + rng.normal(0, 0.01, mask.shape)
            np.save(out / split / f"case{i}_image.npy", image.astype(np.float32))
            np.save(out / split / f"case{i}_mask.npy", mask)
    return out


class ToyImages(torch.utils.data.Dataset):
    """The 2D loader interface of the registry: items {"image", "mask", "name"}, ``classes`` and
    ``hd95_unit``."""

    hd95_unit = "px"

    def __init__(self, root: str, split: str, image_size: int = 16, out_size: int = 16,
                 classes: list[str] | None = None) -> None:
        self.files = sorted(Path(root, split).glob("*_image.npy"))
        if not self.files:
            raise InputError(f"{root}: no toyset {split} images")
        self.classes = ("blob",)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        image = np.load(self.files[i])
        mask = np.load(str(self.files[i]).replace("_image", "_mask"))
        return {"image": torch.from_numpy(image)[None].repeat(3, 1, 1), "mask": torch.from_numpy(mask)[None],
                "name": self.files[i].name.removesuffix("_image.npy")}


def summarise_toy(path: Path, **options: str) -> dict:
    return {"dataset": "toyset", "train": len(ToyImages(str(path), "train"))}


# --- the toy trainer (this module is the kind's trainer) -------------------------------------


def check(task: Task) -> None:
    ToyImages(task.data_path, "train")


def train(task: Task, run: RunDir) -> dict:
    load = registry.load_entry(registry.dataset_kind(task.dataset).loader)
    train_items = list(load(task.data_path, "train"))
    inside = np.mean([it["image"][0][it["mask"][0]].mean().item() for it in train_items])
    outside = np.mean([it["image"][0][~it["mask"][0]].mean().item() for it in train_items])
    threshold = (inside + outside) / 2
    test = load(task.data_path, "test")
    scorer = Scorer(test.hd95_unit, hd95=False)
    for it in test:
        scorer.add(it["name"], it["image"][:1] > threshold, it["mask"], TOY_DATA.classes)
    return build_metrics(task, split="test", scores=scorer.summary(), cost=RunCost(1, 0.1, 0.1, 1e-6),
                         selection=Selection("none", [], None, checkpoint_record("last", 1, False)),
                         hparams={})  # nothing selected


# --- the test ---------------------------------------------------------------------------------


@pytest.fixture
def toy_registered():
    """The two entries registered for one test, and removed after it so no other test sees them."""
    registry.model_names()  # the built-in entries first
    registry.register_model(TOY_MODEL)
    registry.register_dataset(TOY_DATA)
    yield
    del registry.MODEL_KINDS[TOY_MODEL.name], registry.DATASET_KINDS[TOY_DATA.name]


def test_a_model_kind_and_a_dataset_registered_here_run_end_to_end(toy_registered, tmp_path, monkeypatch,
                                                                 capsys):
    data = tmp_path / "toy"
    assert cli(["data", "synth", "--kind", "toyset", "--out", str(data), "--cases", "4"]) == 0
    capsys.readouterr()
    assert cli(["data", "check", "--dataset", "toyset", str(data)]) == 0
    assert json.loads(capsys.readouterr().out) == {"dataset": "toyset", "train": 4}

    # train.py itself, in this process: defaults (variant, dataset) come from the registration
    monkeypatch.setattr(sys, "argv", ["train.py", "--model", "toy-threshold", "--data-path", str(data),
                                      "--output-root", str(tmp_path / "runs"), "--study", "toy"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "train.py"), run_name="__main__")
    assert done.value.code == 0
    (run_dir,) = (tmp_path / "runs" / "toy").iterdir()
    metrics_json = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics_json["model"], metrics_json["variant"], metrics_json["dataset"]) == \
        ("toy-threshold", "plain", "toyset")
    assert metrics_json["dice_mean"] == pytest.approx(1.0)  # the threshold separates 0.2 from 0.8
    assert metrics_json["n_cases"] == 2

    # the launcher's dry run validates a jobs file naming both and shows the task
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"output_root: {tmp_path / 'runs'}\nexecutor: local\nstudies:\n  toy:\n    experiments:\n"
                    f"      - {{model: toy-threshold, variants: [plain], dataset: toyset, data_path: {data}, "
                    "seeds: [0, 1]}\n")
    capsys.readouterr()
    assert cli(["submit", str(jobs), "--dry-run"]) == 0
    shown = capsys.readouterr().out
    assert "2 tasks" in shown and shown.count("toy-threshold_plain_toyset_s") == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(jobs.read_text().replace("dataset: toyset", "dataset: refuge"))
    assert cli(["submit", str(bad), "--dry-run"]) == 2
    assert "toy-threshold trains on toyset, not refuge" in capsys.readouterr().err

    # the collector: the run is in the headline and in the dataset's per-class table
    assert cli(["collect", str(tmp_path / "runs" / "toy"), "--out", str(tmp_path / "out")]) == 0
    headline = pd.read_csv(tmp_path / "out" / "tables" / "headline.csv")
    assert headline[["dataset", "model"]].values.tolist() == [["toyset", "toy-threshold"]]
    per_class = pd.read_csv(tmp_path / "out" / "tables" / "toyset.csv")
    assert per_class["blob"].tolist() == pytest.approx([1.0])
    assert "toyset: Dice per class" in (tmp_path / "out" / "MODEL_COMPARISON.md").read_text()


def test_the_lists_come_from_the_registry(toy_registered):
    from medsam2_hpc.hpc import launcher

    assert registry.model_names() == ("sam2-2d", "sam2-3d", "toy-threshold", "resnet", "yolo")
    assert registry.model_names(baseline=True) == ("resnet", "yolo")
    assert registry.dataset_names()[-1] == "toyset"
    with pytest.raises(InputError, match=r"'toy-treshold' is not one of .*did you mean 'toy-threshold'"):
        registry.model_kind("toy-treshold")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_model(TOY_MODEL)
    with pytest.raises(InputError, match="did you mean 'local'"):
        launcher.backend_for("lokal")
    assert set(launcher.BACKENDS) == {"slurm", "local", "debug"}


def test_slurm_script_asks_the_registry_for_the_model_kinds():
    env = {"PATH": "/usr/bin:/bin", "MEDSAM2_DRY_RUN": "1", "MEDSAM2_ROOT": str(REPO),
           "MEDSAM2_PYTHON": sys.executable}
    out = subprocess.run(["bash", str(REPO / "slurm" / "train_slurm.sh"), "unet"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 2
    assert f"one of {', '.join(registry.model_names())} (got 'unet')" in out.stderr
