"""`make demo` / `medsam2-hpc demo`: the demo study of jobs.yaml end to end through the launcher."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
import pytest

from medsam2_hpc.cli.demo import run_demo
from medsam2_hpc.contract import validate_metrics

ROOT = Path(__file__).resolve().parents[1]
# (model, dataset) of the demo study: SAM2 2D and 3D, the baselines on both datasets
DEMO_ROWS = {("sam2-2d", "refuge"), ("sam2-3d", "btcv"),
             *((m, d) for m in ("resnet", "yolo") for d in ("refuge", "btcv"))}


@pytest.mark.slow
def test_demo_study_end_to_end(tmp_path):
    """Data generation, four model kinds (the baselines on both datasets) trained by the local executor,
    tables and plots; every model learns: test Dice >= 0.5 on held-out cases (issue 14, item 7)."""
    out = io.StringIO()
    rc = run_demo(ROOT / "jobs.yaml", tmp_path / "demo", "local", tmp_path / "no-checkpoints", out=out)
    log = out.getvalue()
    assert rc == 0, log
    for stage in ("[demo 1/4]", "[demo 2/4]", "[demo 3/4]", "[demo 4/4]", "[epoch 1/"):
        assert stage in log
    study = tmp_path / "demo" / "runs" / "demo"
    metrics = list(study.glob("*/metrics.json"))
    assert len(metrics) == 6
    for path in metrics:
        assert validate_metrics(pd.read_json(path, typ="series").to_dict()) == []
    headline = pd.read_csv(study / "comparison" / "tables" / "headline.csv")
    headline = headline[~headline["model"].str.startswith("published")]  # reference rows, not runs
    dice_col = next(c for c in headline.columns if c.startswith("dice_mean"))
    dice = {(m, d): v for m, d, v in zip(headline["model"], headline["dataset"], headline[dice_col],
                                         strict=True)}
    assert len(headline) == len(DEMO_ROWS) and set(dice) == DEMO_ROWS
    assert all(math.isfinite(v) and v >= 0.5 for v in dice.values()), dice  # learned, on the test split
    comparison = study / "comparison"
    assert (comparison / "MODEL_COMPARISON.md").is_file()
    assert list((comparison / "plots").glob("*.png"))
    assert "MODEL_COMPARISON.md" in log  # the table and the paths are printed at the end


def test_demo_with_a_bad_jobs_file_is_one_line_and_exit_2(tmp_path, capsys):
    from medsam2_hpc.cli import main

    bad = tmp_path / "jobs.yaml"
    bad.write_text("version: 1\nstudies: {demo: {experiments: [{model: unet}]}}\n")
    assert main(["demo", "--jobs", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unet" in err[0]
    assert not (tmp_path / "out").exists()
