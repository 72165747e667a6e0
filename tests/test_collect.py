"""The collector on a fabricated study: numbers equal hand computation, nothing is dropped silently."""

from __future__ import annotations

import json
import re
import statistics
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import wilcoxon

from medsam2_hpc import cli
from medsam2_hpc.contract import build_metrics
from medsam2_hpc.errors import InputError
from medsam2_hpc.report import collect_study
from medsam2_hpc.task import RunDir, Task

ORGANS = ("spleen", "right kidney", "liver")
CASES = [f"img00{35 + i}" for i in range(8)]


def _per_case(rng: np.random.Generator, level: float, classes: tuple[str, ...]) -> dict:
    per_case = {}
    for i, case in enumerate(CASES):
        scores = {c: round(float(np.clip(level + rng.normal(0, 0.05), 0, 1)), 4) for c in classes}
        if i == 0 and len(classes) > 1:
            scores[classes[1]] = None  # organ absent from this case: excluded, not Dice 1
        per_case[case] = scores
    return per_case


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _write_run(study: Path, model: str, variant: str, dataset: str, seed: int, level: float,
               prompt: str = "none", **extra) -> dict:
    task = Task(model=model, variant=variant, dataset=dataset, data_path="/data",
                output_root=str(study.parent), study=study.name, seed=seed, prompt=prompt)
    run = task.run_dir.prepare(task)
    classes = ORGANS if dataset == "btcv" else ("cup", "disc")
    rng = np.random.default_rng(zlib.crc32(f"{model}{variant}{seed}".encode()))
    per_case = _per_case(rng, level, classes)
    per_class = {c: _mean(s[c] for s in per_case.values()) for c in classes}
    if dataset == "btcv":
        extra.setdefault("dice_mean_per_slice", min(1.0, _mean(per_class.values()) + 0.05))
    metrics = build_metrics(task, split="test", dice_mean=_mean(per_class.values()), per_class=per_class,
                            per_case=per_case, epochs_completed=3, train_seconds=3600.0 * (1 + seed),
                            eval_seconds=10.0, params_m={"resnet": 25.6, "yolo": 27.6}.get(model, 38.9),
                            hd95_mean=5.0 + seed, **extra)
    run.write_metrics(metrics)
    run.update_status(state="completed", attempts=1)
    return metrics


@pytest.fixture()
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    monkeypatch.setenv("MEDSAM2_GIT_SHA", "abc123")
    root = tmp_path / "runs" / "demo"
    root.mkdir(parents=True)
    made = {
        "sam2": [_write_run(root, "sam2-3d", "hiera_t", "btcv", s, 0.85, "bbox", throughput=12.5)
                 for s in (0, 1)],
        "resnet": [_write_run(root, "resnet", "resnet50", "btcv", s, 0.70) for s in (0, 1)],
        "yolo": [_write_run(root, "yolo", "yolo11l-seg", "btcv", 0, 0.60)],
        "refuge": [_write_run(root, "sam2-2d", "hiera_s", "refuge", 0, 0.80, "click")],
    }
    # runs that must show up as what they are
    failed = RunDir(root / "failed_run")
    failed.update_status(state="failed", attempts=2,
                         error="Traceback ...\n  File x\nRuntimeError: CUDA out of memory")
    RunDir(root / "running_run").update_status(state="running", attempts=1)
    RunDir(root / "preempted_run").update_status(state="preempted", attempts=1)
    missing = root / "missing_run"
    missing.mkdir()
    (missing / "task.yaml").write_text(yaml.safe_dump({"model": "yolo", "variant": "yolo11n-seg",
                                                       "dataset": "refuge", "seed": 3}))
    malformed = root / "malformed_run"
    malformed.mkdir()
    bad = dict(made["yolo"][0])
    del bad["seed"]
    (malformed / "metrics.json").write_text(json.dumps(bad))
    old = root / "old_schema_run"
    old.mkdir()
    (old / "metrics.json").write_text(json.dumps({**made["yolo"][0], "schema_version": 0}))
    stray = root / "stray_case_run"  # well-formed apart from two per-case Dice values
    stray.mkdir()
    cases = {**made["yolo"][0]["per_case"], "img0035": {"spleen": "n/a", "right kidney": 0.5, "liver": 1.5}}
    (stray / "metrics.json").write_text(json.dumps({**made["yolo"][0], "per_case": cases}))
    broken = root / "broken_json_run"
    broken.mkdir()
    (broken / "metrics.json").write_text('{"dice_mean": 0.5,')
    return root, made


def _case_scores(runs: list[dict]) -> pd.Series:
    """Hand computation: a case's Dice = mean over its scored classes, then over seeds."""
    per_seed = [{case: _mean(scores.values()) for case, scores in m["per_case"].items()} for m in runs]
    return pd.Series({case: statistics.mean(s[case] for s in per_seed) for case in CASES})


def test_headline_numbers_equal_hand_computation(study, tmp_path) -> None:
    root, made = study
    report = collect_study(root, tmp_path / "out", "csv")
    head = pd.read_csv(tmp_path / "out" / "tables" / "headline.csv")
    row = head[(head["model"] == "sam2-3d")].iloc[0]
    dice = [m["dice_mean"] for m in made["sam2"]]
    assert row["dice_mean"] == pytest.approx(statistics.mean(dice))
    assert row["dice_std"] == pytest.approx(statistics.stdev(dice))
    assert row["n_runs"] == 2
    assert row["hd95_mm"] == pytest.approx(5.5)
    assert row["train_hours"] == pytest.approx(1.5)
    assert row["throughput"] == pytest.approx(12.5)
    assert row["params_m"] == pytest.approx(38.9)
    per_slice = statistics.mean(m["dice_mean_per_slice"] for m in made["sam2"])
    assert row["dice_per_slice"] == pytest.approx(per_slice)
    yolo = head[head["model"] == "yolo"].iloc[0]
    assert yolo["n_runs"] == 1 and np.isnan(yolo["dice_std"])  # one seed: no spread
    assert "sam2-3d" in report.headline_text() and "±" in report.headline_text()


def test_paired_test_equals_scipy(study, tmp_path) -> None:
    root, made = study
    collect_study(root, tmp_path / "out", "csv")
    tests = pd.read_csv(tmp_path / "out" / "tables" / "paired_tests.csv")
    row = tests[tests["model"] == "sam2-3d"].iloc[0]
    assert row["baseline"] == "resnet/resnet50/none"  # resnet (0.70) beats yolo (0.60)
    ours, base = _case_scores(made["sam2"]), _case_scores(made["resnet"])
    expected = wilcoxon(ours, base)
    assert row["n_pairs"] == len(CASES)
    assert row["p_value"] == pytest.approx(expected.pvalue)
    assert row["statistic"] == pytest.approx(expected.statistic)
    assert row["mean_diff"] == pytest.approx((ours - base).mean())
    refuge = tests[tests["dataset"] == "refuge"].iloc[0]
    assert np.isnan(refuge["p_value"]) and refuge["note"] == "no baseline run on this dataset"


def test_too_few_pairs_say_n_a(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MEDSAM2_GIT_SHA", "abc123")
    root = tmp_path / "runs" / "small"
    root.mkdir(parents=True)
    for model, variant, level in (("sam2-2d", "hiera_t", 0.8), ("resnet", "resnet18", 0.6)):
        metrics = _write_run(root, model, variant, "refuge", 0, level)
        metrics["per_case"] = dict(list(metrics["per_case"].items())[:3])
        Task(model=model, variant=variant, dataset="refuge", data_path="/data", output_root=str(root.parent),
             study="small").run_dir.write_metrics(metrics)
    report = collect_study(root, tmp_path / "out", "md")
    row = report.tables["paired_tests"].data.iloc[0]
    assert row["n_pairs"] == 3 and row["note"].startswith("n/a")
    assert "n/a" in report.tables["paired_tests"].display["p"].iloc[0]


def test_per_organ_and_per_slice_tables_are_separate(study, tmp_path) -> None:
    root, made = study
    report = collect_study(root, tmp_path / "out", "csv", with_published=True)
    organs = pd.read_csv(tmp_path / "out" / "tables" / "btcv_organs.csv")
    sam = organs[organs["model"] == "sam2-3d"].iloc[0]
    for organ in ORGANS:
        assert sam[organ] == pytest.approx(statistics.mean(m["per_class"][organ] for m in made["sam2"]))
    assert report.tables["btcv_organs"].classes == ["spleen", "right kidney", "liver"]  # BTCV label order
    published = organs[organs["model"].str.startswith("published: Medical SAM 2")].iloc[0]
    assert published["spleen"] == pytest.approx(0.922) and published["mean"] == pytest.approx(0.890)
    per_slice = pd.read_csv(tmp_path / "out" / "tables" / "btcv_per_slice.csv")
    assert per_slice.loc[per_slice["model"] == "sam2-3d", "mean"].iloc[0] == pytest.approx(
        statistics.mean(m["dice_mean_per_slice"] for m in made["sam2"]))
    refuge = pd.read_csv(tmp_path / "out" / "tables" / "refuge.csv")
    assert list(refuge.columns[-3:]) == ["cup", "disc", "mean"]
    assert refuge["model"].str.startswith("published: REFUGE").any()


def test_failed_missing_running_and_malformed_runs_are_reported(study, tmp_path) -> None:
    root, _ = study
    report = collect_study(root, tmp_path / "out", "md,csv")
    states = dict(zip(report.study.runs["run"], report.study.runs["state"], strict=True))
    assert states["failed_run"] == "failed"
    assert states["running_run"] == "running"
    assert states["preempted_run"] == "preempted"
    assert states["missing_run"] == "missing"
    assert states["malformed_run"] == "malformed"
    assert states["old_schema_run"] == "malformed"
    assert states["broken_json_run"] == "malformed"
    assert states["stray_case_run"] == "malformed"
    warned = "\n".join(report.warnings)
    assert ("stray_case_run/metrics.json: skipped: per_case['img0035']['spleen'] = 'n/a' is not a number "
            "or null; per_case['img0035']['liver'] = 1.5 is outside [0, 1]") in warned
    assert "malformed_run/metrics.json" in warned and "missing key 'seed'" in warned
    assert "old_schema_run/metrics.json" in warned and "schema_version 0" in warned
    assert "broken_json_run/metrics.json" in warned
    incomplete = pd.read_csv(tmp_path / "out" / "tables" / "incomplete_runs.csv")
    assert set(incomplete["run"]) == {"failed_run", "running_run", "preempted_run", "missing_run",
                                      "malformed_run", "old_schema_run", "broken_json_run",
                                      "stray_case_run"}
    doc = (tmp_path / "out" / "MODEL_COMPARISON.md").read_text()
    assert "RuntimeError: CUDA out of memory" in doc
    assert "missing_run" in doc and "yolo11n-seg" in doc
    assert "## Warnings" in doc


def _md_tables(text: str) -> list[list[list[str]]]:
    """Every pipe table in a Markdown text, as rows of cells."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif current:
            tables.append(current)
            current = []
    return tables


def test_outputs_parse_back(study, tmp_path) -> None:
    root, _ = study
    out = tmp_path / "out"
    report = collect_study(root, out, "md,csv,tex", with_published=True)
    for name, table in report.tables.items():
        csv = pd.read_csv(out / "tables" / f"{name}.csv")
        assert len(csv) == len(table.data)
        md = _md_tables((out / "tables" / f"{name}.md").read_text())
        assert len(md) == 1
        header, rule, *rows = md[0]
        assert all(re.fullmatch(r":?-+:?", c) for c in rule)
        assert len(rows) == len(table.display) and all(len(r) == len(header) for r in rows)
        tex = (out / "tables" / f"{name}.tex").read_text()
        assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
        assert r"\toprule" in tex and r"\bottomrule" in tex
        assert tex.count("\\begin{") == tex.count("\\end{")
        assert "hiera_t" not in tex  # underscores escaped
    doc = (out / "MODEL_COMPARISON.md").read_text()
    assert len(_md_tables(doc)) >= 5
    assert "published: Medical SAM 2 (Medical SAM 2 paper; bbox prompts" in doc
    for png in ("dice_boxplot.png", "btcv_organ_heatmap.png", "dice_vs_time.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{png}" in doc


def test_bad_input_exits_2_and_writes_nothing(study, tmp_path, capsys) -> None:
    root, _ = study
    out = tmp_path / "out"
    assert cli.main(["collect", str(root), "--out", str(out), "--format", "md,xlsx"]) == 2
    assert "--format: 'xlsx' is not one of md, csv, tex" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main(["collect", str(tmp_path / "nowhere")]) == 2
    assert "not a directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no run directories"):
        collect_study(empty)


def test_cli_prints_headline_and_warnings(study, tmp_path, capsys) -> None:
    root, _ = study
    assert cli.main(["collect", str(root), "--with-published"]) == 0
    captured = capsys.readouterr()
    assert "sam2-3d" in captured.out and "published: nnU-Net" in captured.out
    assert "warning: " in captured.err and "malformed_run" in captured.err
    assert (root / "comparison" / "MODEL_COMPARISON.md").exists()
    assert (root / "comparison" / "tables" / "headline.tex").exists()


def test_case_scores_skip_absent_classes_and_ragged_cases() -> None:
    from medsam2_hpc.report.read import case_scores as _case_scores

    assert _case_scores({"a": {"x": 0.5, "y": 1.0}, "b": {"x": None, "y": 0.2}}).tolist() == [0.75, 0.2]
    assert _case_scores({"a": {"x": 0.5, "y": 1.0}, "b": {"x": 0.1}}).tolist() == [0.75, 0.1]
    assert np.isnan(_case_scores({"a": {"x": None}, "b": {}})).all()


def test_parallel_collect_equals_serial(study, tmp_path, monkeypatch) -> None:
    """Worker processes read slices of the run dirs; the result must not depend on how it was split."""
    from medsam2_hpc.report import collect
    from medsam2_hpc.report.pool import process_pool

    root, _ = study
    (root / "comparison" / "tables").mkdir(parents=True)  # output of an earlier collect: not a run
    (root / "comparison" / "notes.txt").write_text("x")
    serial = collect.load_study(root)
    assert len(serial.runs) == 14 and "comparison" not in set(serial.runs["run"])
    monkeypatch.setattr(collect, "_CHUNK_RUNS", 4)  # 14 run dirs + the comparison dir: 4 slices
    with process_pool(2) as pool:
        parallel = collect.load_study(root, pool)
    pd.testing.assert_frame_equal(parallel.runs, serial.runs)
    pd.testing.assert_frame_equal(parallel.classes, serial.classes)
    assert parallel.warnings == serial.warnings
    assert list(parallel.cases) == list(serial.cases)
    for run, (ids, scores) in serial.cases.items():
        assert parallel.cases[run][0] == ids
        np.testing.assert_array_equal(parallel.cases[run][1], scores)
    assert len({id(ids) for ids, _ in parallel.cases.values()}) == 1  # one test set: one shared tuple
    one, two = tmp_path / "one", tmp_path / "two"
    files_one = collect_study(root, one, "md,csv", workers=1).files
    files_two = collect_study(root, two, "md,csv", workers=2).files  # figures drawn by the workers too
    assert [p.relative_to(two) for p in files_two] == [p.relative_to(one) for p in files_one]
    for table in (two / "tables").iterdir():
        assert table.read_bytes() == (one / "tables" / table.name).read_bytes(), table.name
    assert (two / "MODEL_COMPARISON.md").read_text() == (one / "MODEL_COMPARISON.md").read_text()


def test_collector_does_not_import_torch() -> None:
    """Importing torch costs seconds; the collector only needs the BTCV organ names."""
    import subprocess
    import sys

    code = "import sys, medsam2_hpc.report, medsam2_hpc.report.tables; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
