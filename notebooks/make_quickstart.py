#!/usr/bin/env python
"""Write ``notebooks/quickstart.ipynb`` from the cells below (run it after editing them).

The notebook is generated rather than edited in Jupyter so that its cells stay reviewable as
plain Python, the committed file never carries outputs, and cell ids are stable (a small,
deterministic diff). ``tests/test_notebook.py`` checks that the file matches this script and
executes it with nbclient.

    .venv/bin/python notebooks/make_quickstart.py          # rewrite the notebook
    .venv/bin/python notebooks/make_quickstart.py --check  # exit 1 when it is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

NOTEBOOK = Path(__file__).with_name("quickstart.ipynb")

# (cell id, "md" | "code", source); ids stay fixed so regenerating gives the same file.
CELLS: list[tuple[str, str, str]] = [
    ("intro", "md", """\
# MedSAM2-HPC quickstart

This project fine-tunes Meta's **SAM 2** for medical image segmentation and compares it with
ResNet and YOLO11 baselines, on a laptop or as Slurm job arrays on a cluster. This notebook is the
counterpart of the Medical-SAM2 Colab notebook: it walks through the demo study step by step with
the package's Python API, on small synthetic data written in the real on-disk layouts:

1. set-up and a GPU check
2. data: BTCV (raw NIfTI layout) and REFUGE, one CT slice with its organ labels
3. one SAM2 3D fine-tuning run (Hiera-T) and its `metrics.json`
4. inference on the test split (`inference_3d.py`): NIfTI output on the source grid, a PNG
5. one ResNet baseline on the same data
6. the comparison table and plots (`medsam2-hpc collect`)
7. the HPC path: `jobs.yaml` and `medsam2-hpc submit --dry-run`

It runs in about a minute on a 2-core CPU (tiny images, one epoch, random SAM2 weights unless
`checkpoints/sam2_hiera_tiny.pt` exists), so the numbers only show that the pipeline works: they
are not results."""),

    ("setup-md", "md", """\
## 1. Set-up

Install from a clone of the repository with `make venv` (torch, Meta's `sam2`, then this package
with its dev extra; see the README), and open this notebook with the `.venv` python as kernel.
Everything the notebook writes goes under `$MEDSAM2_NOTEBOOK_OUT` (default `./notebook_out`). On a
GPU the cells below pick CUDA, bf16 autocast and a larger image size by themselves."""),

    ("setup", "code", """\
%matplotlib inline
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Image, display

import medsam2_hpc

# The repository root holds jobs.yaml (the notebook may be run from notebooks/ or the root).
REPO = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "jobs.yaml").is_file())
OUT = Path(os.environ.get("MEDSAM2_NOTEBOOK_OUT", "notebook_out")).resolve()
OUT.mkdir(parents=True, exist_ok=True)

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
AMP = "bf16" if GPU else "none"  # autocast only pays off on a GPU
IMAGE_SIZE = 256 if GPU else 64  # model input side; the real recipe uses 1024


def fmt(value):
    # metrics.json stores a score that could not be computed (e.g. no organ predicted) as null
    return "n/a" if value is None else f"{value:.3f}"


print(f"medsam2_hpc {medsam2_hpc.__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")
print("GPU:", torch.cuda.get_device_name(0) if GPU else "none (CPU run: tiny sizes)")
print("repository:", REPO)
print("outputs:", OUT)"""),

    ("data-md", "md", """\
## 2. Data in the real layouts

`medsam2_hpc.data.synthetic` writes small, learnable stand-ins for the two datasets exactly as
the downloads lay them out, so the same loaders run on both. BTCV here uses the raw layout
(`imagesTr/img00XX.nii.gz`, `labelsTr/label00XX.nii.gz`, `dataset_0.json`, an LPS-like affine);
REFUGE uses Medical-SAM2's multi-rater copy (`Training-400/<name>/<name>_cropped.jpg` with seven
rater cup masks). The command-line equivalent is `medsam2-hpc data synth --kind btcv --out DIR`.
With the real data, point `data_path` at your download instead."""),

    ("data", "code", """\
from medsam2_hpc.data import synthetic
from medsam2_hpc.data.btcv import ORGANS, BTCVVolumes
from medsam2_hpc.data.refuge import RefugeDataset

BTCV = synthetic.make_btcv(OUT / "data" / "btcv", layout="nifti", n_train=2, n_test=1, depth=12, size=64)
REFUGE = synthetic.make_refuge(OUT / "data" / "REFUGE", layout="multirater", n_train=2, n_test=1, size=128)
for root in (BTCV, REFUGE):
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    print(f"{root.name}: {len(files)} files, e.g. {files[:3]}")
print(json.loads((BTCV / "dataset_0.json").read_text()))"""),

    ("show-slice", "code", """\
volume = BTCVVolumes(BTCV, "train")[0]
label = volume.label
k = int(np.argmax([len(np.unique(s)) for s in label]))  # the slice showing the most organs
spacing = tuple(round(float(s), 2) for s in volume.spacing)
print(f"case {volume.case}: volume {volume.image.shape} (D, H, W), spacing {spacing} mm, slice {k}")

refuge = RefugeDataset(REFUGE, "train", image_size=128, out_size=128)
item = refuge[0]

fig, axes = plt.subplots(1, 3, figsize=(12, 4))
axes[0].imshow(volume.image[k], cmap="gray")
axes[0].set_title(f"BTCV {volume.case}, slice {k}")
shown = np.ma.masked_equal(label[k], 0)
axes[1].imshow(volume.image[k], cmap="gray")
axes[1].imshow(shown, cmap="tab20", vmin=0, vmax=13, alpha=0.6, interpolation="nearest")
axes[1].set_title("organ labels")
for organ in np.unique(label[k])[1:]:
    rows, cols = np.nonzero(label[k] == organ)
    axes[1].annotate(ORGANS[int(organ)], (cols.mean(), rows.mean()), color="white", fontsize=8, ha="center")
axes[2].imshow(item["image"].permute(1, 2, 0).numpy())
axes[2].contour(item["mask"][0].numpy(), levels=[0.5], colors="cyan")
axes[2].set_title(f"REFUGE {item['name']}: {', '.join(refuge.classes)} mask (mean of 7 raters)")
for ax in axes:
    ax.axis("off")
plt.show()"""),

    ("sam2-md", "md", """\
## 3. One SAM2 3D fine-tuning run

A `Task` is one run, fully resolved; `run_task` is the function every front end calls
(`medsam2-hpc submit`, `sbatch slurm/train_slurm.sh`, `python train.py --model sam2-3d`,
`python train_3d.py -net sam2 ...`). Each clip of `video_length` slices is a short video: organs
are prompted with boxes on every `prompt_freq`-th slice and SAM 2's memory carries them through
the others. The run directory holds `task.yaml`, `status.json`, `metrics.json`, `checkpoints/`
(`last.pt`, `best.pt`), `logs/` (TensorBoard) and `predictions/`. Running the cell again returns
the finished run's metrics instead of training again (a requeued Slurm job resumes the same way)."""),

    ("sam2-train", "code", """\
from medsam2_hpc.runner import run_task
from medsam2_hpc.task import Task

STUDY = "quickstart"
meta_ckpt = REPO / "checkpoints" / "sam2_hiera_tiny.pt"
sam2_task = Task(
    model="sam2-3d", variant="hiera_t", dataset="btcv", data_path=str(BTCV),
    output_root=str(OUT / "runs"), study=STUDY, prompt="bbox",
    hparams={"epochs": 1, "image_size": IMAGE_SIZE, "video_length": 2, "prompt_freq": 2,
             "clips_per_epoch": 4, "val_freq": 1, "batch_size": 1, "num_workers": 0,
             "device": DEVICE, "amp": AMP,
             "sam_ckpt": str(meta_ckpt) if meta_ckpt.is_file() else "none"},
)
print("SAM2 weights:", "Meta's Hiera-T" if meta_ckpt.is_file() else f"random (no {meta_ckpt})")
sam2_metrics = run_task(sam2_task)
print("run directory:", sam2_task.run_dir.path)"""),

    ("sam2-metrics", "code", """\
run = sam2_task.run_dir
metrics = json.loads(run.metrics_json.read_text())
print(f"volumetric Dice (per case and organ, then averaged): {fmt(metrics['dice_mean'])}")
print(f"per-slice Dice (what Medical-SAM2 reports):          {fmt(metrics['dice_mean_per_slice'])}")
print(f"HD95 {fmt(metrics['hd95_mean'])} mm, {metrics['params_m']:.1f} M parameters, "
      f"{metrics['train_seconds']:.0f} s training, {metrics['epochs_completed']} epoch(s)")
display(pd.DataFrame({"volumetric Dice": metrics["per_class"],
                      "per-slice Dice": metrics.get("per_class_per_slice", {})}))
print("TensorBoard logs:", run.logs, [p.name for p in run.logs.rglob("events.out.tfevents*")])
print("checkpoints:", sorted(p.name for p in run.checkpoints.iterdir()))"""),

    ("tb-md", "md", """\
Volumetric Dice scores each organ over the whole volume (per case, then averaged); the per-slice
mean that Medical-SAM2 reports is stored beside it under its own name, `dice_mean_per_slice`, so
the two are never compared blind. Open the training curves with
`tensorboard --logdir <the logs directory above>` (in Jupyter: `%load_ext tensorboard`, then
`%tensorboard --logdir ...`). With random weights and four training clips the Dice is near zero:
for real results raise `epochs` and `image_size`, drop `clips_per_epoch`, and put Meta's
`sam2_hiera_tiny.pt` in `checkpoints/` (see `checkpoints/download_ckpts.sh`)."""),

    ("infer-md", "md", """\
## 4. Inference on the test split

`inference_3d.py` predicts whole volumes with the trained checkpoint (the config and image size
are read from it). Below it is called through the same function the script runs,
`medsam2_hpc.inference.cli.main`; the printed command does the same from a shell. For NIfTI input each
prediction is written as `<case>.nii.gz` on the source grid (same shape, affine and orientation),
beside `<case>.npy`, `dice.csv`, `metrics.json` and, with `-save_vis`, image | truth | prediction PNGs."""),

    ("infer", "code", """\
from medsam2_hpc.inference.cli import main as inference_3d

INFER = OUT / "inference"
args = ["-checkpoint", str(run.best_ckpt), "-data_path", str(BTCV), "-dataset", "btcv",
        "-split", "test", "-prompt", "bbox", "-output_dir", str(INFER), "-save_vis", "-amp", AMP]
print("python inference_3d.py", shlex.join(args))
assert inference_3d(args) == 0
print(sorted(p.relative_to(INFER).as_posix() for p in INFER.rglob("*") if p.is_file()))"""),

    ("infer-check", "code", """\
import nibabel as nib

for volume in BTCVVolumes(BTCV, "test"):
    source = nib.load(volume.source)
    predicted = nib.load(INFER / f"{volume.case}.nii.gz")
    same = predicted.shape == source.shape and np.allclose(predicted.affine, source.affine)
    print(f"{volume.case}: prediction {predicted.shape} {nib.aff2axcodes(predicted.affine)}, "
          f"source {source.shape} {nib.aff2axcodes(source.affine)}: same grid and affine: {same}")
    print("  organ ids predicted:", np.unique(np.asarray(predicted.dataobj)).tolist())
    assert same
png = sorted((INFER / "vis").glob("*.png"))[0]
plt.figure(figsize=(9, 3.2))
plt.imshow(plt.imread(png), interpolation="nearest")
plt.title(f"{png.name}: image | ground truth | prediction")
plt.axis("off")
plt.show()"""),

    ("resnet-md", "md", """\
## 5. A ResNet baseline on the same data

The same `Task` / `run_task` path with `model="resnet"`: a ResNet-18 encoder U-Net trained slice by
slice; test volumes are predicted slice by slice, stacked and scored volumetrically exactly like
SAM2, so the numbers are comparable. (`model="yolo"` trains YOLO11 the same way.)"""),

    ("resnet", "code", """\
resnet_task = Task(
    model="resnet", variant="resnet18", dataset="btcv", data_path=str(BTCV),
    output_root=str(OUT / "runs"), study=STUDY,
    hparams={"epochs": 2, "image_size": IMAGE_SIZE, "batch_size": 4, "num_workers": 0,
             "device": DEVICE, "amp": AMP},
)
resnet_metrics = run_task(resnet_task)
print(f"ResNet-18: Dice {fmt(resnet_metrics['dice_mean'])} "
      f"(per slice {fmt(resnet_metrics.get('dice_mean_per_slice'))}), "
      f"{resnet_metrics['params_m']:.1f} M parameters")"""),

    ("collect-md", "md", """\
## 6. The comparison

`collect_study` (behind `medsam2-hpc collect`) reads every run's `metrics.json` in the study
directory and writes the tables (Markdown, CSV, LaTeX), the plots and `MODEL_COMPARISON.md`. Runs
that failed or are still running are listed with the reason, never silently dropped."""),

    ("collect", "code", """\
from medsam2_hpc.report import collect_study

report = collect_study(OUT / "runs" / STUDY)
print(str(report).splitlines()[0])
display(report.tables["headline"].display)
print("report:", report.document)
for plot in (p for p in report.files if p.suffix == ".png"):
    print(plot.name)
    display(Image(filename=str(plot), width=450))"""),

    ("hpc-md", "md", """\
## 7. The same study on a Slurm cluster

On a cluster the runs come from `jobs.yaml`: each study lists experiments (model, variants,
dataset, hyper-parameters, seeds), and `medsam2-hpc submit` sends one Slurm job array per resource
profile through submitit, each task inside the Apptainer image (`medsam2-hpc container build`).
Tasks checkpoint and requeue on Slurm's pre-timeout signal and resume in place. The whole demo
study (SAM2 2D and 3D, ResNet, YOLO) runs locally with `make demo` (`medsam2-hpc demo`); the
cluster workflow is:

```
medsam2-hpc submit jobs.yaml --dry-run    # the task table and the sbatch scripts; writes nothing
medsam2-hpc submit jobs.yaml              # the `main` study as Slurm arrays
medsam2-hpc status jobs.yaml              # per-task state
medsam2-hpc collect runs/main             # tables, plots, MODEL_COMPARISON.md
```

`submit` checks every task before anything is queued (data, hyper-parameters, checkpoints), so
the main study's dry run needs the real data in `data/`. Here it runs on a small study over the
data generated above (`max_array_size` set, so it asks no cluster for its MaxArraySize):"""),

    ("hpc", "code", """\
from medsam2_hpc import spec

demo = spec.load(REPO / "jobs.yaml", study="demo")
print(f"study 'demo' of jobs.yaml: {len(demo.tasks)} tasks:",
      ", ".join(f"{t.model}/{t.variant}" for t in demo.tasks))
(OUT / "jobs.yaml").write_text(f\"\"\"\\
output_root: {OUT / 'runs'}
executor: slurm
container: {{runtime: none}}
profiles:
  gpu: {{gpus: 1, cpus: 8, mem: 32G, time: 240, max_array_size: 1000}}
defaults: {{profile: gpu, seeds: [0, 1]}}
studies:
  quick:
    experiments:
      - {{model: resnet, variants: [resnet18, resnet50], dataset: refuge, data_path: {REFUGE}}}
      - {{model: resnet, variants: [resnet18], dataset: btcv, data_path: {BTCV}}}
\"\"\")
dry = subprocess.run([sys.executable, "-m", "medsam2_hpc.cli", "submit", str(OUT / "jobs.yaml"), "--dry-run"],
                     cwd=OUT, capture_output=True, text=True, check=True)
lines = dry.stdout.splitlines()
print("$ medsam2-hpc submit jobs.yaml --dry-run")
print("\\n".join(lines[:48]), f"\\n... ({len(lines) - 48} more lines)" if len(lines) > 48 else "")"""),

    ("next-md", "md", """\
## Next steps

- Real data and checkpoints: `data/download_*.sh`, `checkpoints/download_ckpts.sh` (see the README).
- The commands Medical-SAM2 users know: `python train_3d.py -net sam2 -exp_name BTCV_MedSAM2
  -sam_ckpt ./checkpoints/sam2_hiera_small.pt -sam_config sam2_hiera_s -image_size 1024
  -val_freq 1 -prompt bbox -prompt_freq 2 -dataset btcv -data_path ./data/btcv`, and
  `python train_2d.py -net sam2 ... -dataset REFUGE`.
- Everything this notebook wrote is under the output directory printed at the top."""),
]


def build() -> nbformat.NotebookNode:
    """The notebook, without outputs, with fixed cell ids and the venv's python3 kernel."""
    cells = []
    for cell_id, kind, source in CELLS:
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        cell["id"] = cell_id
        cells.append(cell)
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


def render() -> str:
    return nbformat.writes(build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the notebook is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = NOTEBOOK.read_text(encoding="utf-8") if NOTEBOOK.is_file() else ""
        if current != text:
            print(f"{NOTEBOOK}: out of date; run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    from medsam2_hpc.atomic import write_text

    write_text(NOTEBOOK, text)
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
