"""The collector on a fabricated study: numbers equal hand computation, nothing is dropped silently."""

from __future__ import annotations

import json
import math
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
from medsam2_hpc.contract import RunCost, Selection, build_metrics
from medsam2_hpc.errors import InputError
from medsam2_hpc.report import collect_study
from medsam2_hpc.scoring import Scores
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


VAL_CASES = ["img0001", "img0002", "img0003", "img0004"]


def _write_run(study: Path, model: str, variant: str, dataset: str, seed: int, level: float,
               prompt: str = "none", hparams: dict | None = None, **extra) -> dict:
    """A completed run as a round-2 trainer writes it: selected on val, scored on test, HD95 in mm."""
    hparams = {"lr": 1e-4, "epochs": 3} if hparams is None else hparams
    task = Task(model=model, variant=variant, dataset=dataset, data_path="/data", hparams=hparams,
                output_root=str(study.parent), study=study.name, seed=seed, prompt=prompt)
    selection = Selection(extra.pop("selection_split", "val"), extra.pop("selection_cases", VAL_CASES),
                          extra.pop("selection_dice", level),
                          extra.pop("checkpoint", {"select": "best", "epoch": 2, "validated": True}))
    run = task.run_dir.prepare(task)
    classes = ORGANS if dataset == "btcv" else ("cup", "disc")
    rng = np.random.default_rng(zlib.crc32(f"{model}{variant}{seed}".encode()))
    per_case = _per_case(rng, level, classes)
    per_class = {c: _mean(s[c] for s in per_case.values()) for c in classes}
    if dataset == "btcv":
        extra.setdefault("dice_mean_per_slice", min(1.0, _mean(per_class.values()) + 0.05))
        extra.setdefault("per_class_per_slice", {c: min(1.0, v + 0.05) for c, v in per_class.items()})
    scores = Scores(_mean(per_class.values()), per_class, per_case, extra.pop("hd95_unit", "mm"),
                    hd95_mean=extra.pop("hd95_mean", 5.0 + seed))
    cost = RunCost(3, 3600.0 * (1 + seed), 10.0, {"resnet": 25.6, "yolo": 27.6}.get(model, 38.9))
    metrics = build_metrics(task, split="test", scores=scores, selection=selection, cost=cost,
                            hparams=hparams, **extra)
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


def test_shown_tables_name_model_kinds_by_their_registry_label(study, tmp_path) -> None:
    """The CSV keeps the kind's name (what jobs.yaml says); Markdown shows ModelKind.label."""
    root, _ = study
    report = collect_study(root, tmp_path / "out", "md,csv")
    head = report.tables["headline"]
    assert {"sam2-3d", "resnet", "yolo"} <= set(head.data["model"])
    shown = set(head.display["Model"])
    assert {"sam2-3d", "ResNet", "YOLO"} <= shown and "resnet" not in shown
    assert set(pd.read_csv(tmp_path / "out" / "tables" / "headline.csv")["model"]) == set(head.data["model"])
    assert "ResNet" in (tmp_path / "out" / "tables" / "headline.md").read_text()


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
        RunDir(root / metrics["task_id"]).write_metrics(metrics)
    report = collect_study(root, tmp_path / "out", "md")
    row = report.tables["paired_tests"].data.iloc[0]
    assert row["n_pairs"] == 3 and row["note"].startswith("n/a")
    assert "n/a" in report.tables["paired_tests"].display["p"].iloc[0]


def test_per_organ_and_per_slice_tables_are_separate(study, tmp_path) -> None:
    root, made = study
    report = collect_study(root, tmp_path / "out", "csv")
    organs = pd.read_csv(tmp_path / "out" / "tables" / "btcv_organs.csv")
    sam = organs[organs["model"] == "sam2-3d"].iloc[0]
    for organ in ORGANS:
        assert sam[organ] == pytest.approx(statistics.mean(m["per_class"][organ] for m in made["sam2"]))
    assert report.tables["btcv_organs"].classes == ["spleen", "right kidney", "liver"]  # BTCV label order
    per_slice = pd.read_csv(tmp_path / "out" / "tables" / "btcv_per_slice.csv")
    sam = per_slice[per_slice["model"] == "sam2-3d"].iloc[0]
    assert sam["mean"] == pytest.approx(statistics.mean(m["dice_mean_per_slice"] for m in made["sam2"]))
    liver = statistics.mean(m["per_class_per_slice"]["liver"] for m in made["sam2"])
    assert sam["liver"] == pytest.approx(liver)
    refuge = pd.read_csv(tmp_path / "out" / "tables" / "refuge.csv")
    assert list(refuge.columns[-3:]) == ["cup", "disc", "mean"]


def test_published_rows_sit_beside_the_same_metric_only(study, tmp_path) -> None:
    """Medical SAM 2's figures are per-slice Dice: never in a volumetric column, table or heat map."""
    root, _ = study
    report = collect_study(root, tmp_path / "out", "csv", with_published=True)
    head = report.tables["headline"].data
    medsam2 = head[head["model"].str.startswith("published: Medical SAM 2")].iloc[0]
    assert medsam2["dice_per_slice"] == pytest.approx(0.890) and np.isnan(medsam2["dice_mean"])
    nnunet_cv = head[head["model"].str.contains("own 5-fold CV")].iloc[0]  # volumetric per case
    assert nnunet_cv["dice_mean"] == pytest.approx(0.831) and np.isnan(nnunet_cv["dice_per_slice"])
    assert not head[head["published"] & (head["dataset"] == "refuge")].size  # cup only: not the mean
    organs = report.tables["btcv_organs"].data  # the heat map draws this table
    assert not organs["model"].str.startswith("published").any()
    per_slice = report.tables["btcv_per_slice"].data
    row = per_slice[per_slice["model"].str.startswith("published: Medical SAM 2")].iloc[0]
    assert row["spleen"] == pytest.approx(0.922) and row["mean"] == pytest.approx(0.890)
    refuge = report.tables["refuge"].data
    row = refuge[refuge["model"].str.startswith("published: REFUGE")].iloc[0]
    assert row["cup"] == pytest.approx(0.88) and np.isnan(row["disc"]) and np.isnan(row["mean"])
    shown = report.tables["headline"].display
    assert shown.loc[head.index[head["model"] == medsam2["model"]][0], "Dice (mean ± std)"] == ""

    # a study without REFUGE runs shows no REFUGE published number anywhere
    btcv_only = tmp_path / "runs" / "btcv_only"
    btcv_only.mkdir(parents=True)
    _write_run(btcv_only, "sam2-3d", "hiera_t", "btcv", 0, 0.8, "bbox")
    report = collect_study(btcv_only, tmp_path / "out2", "md", with_published=True)
    text = report.document.read_text()
    assert "published: Medical SAM 2" in text and "REFUGE" not in text


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


def _study(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDSAM2_GIT_SHA", "abc123")
    root = tmp_path / "runs" / name
    root.mkdir(parents=True)
    return root


def test_a_sweep_gives_one_row_per_hyper_parameter_set(tmp_path, monkeypatch) -> None:
    """Two learning rates, two seeds each: two rows, labelled by the one hyper-parameter that varies."""
    root = _study(tmp_path, "lr-sweep", monkeypatch)
    for lr, level in ((1e-4, 0.85), (1e-3, 0.60)):
        for seed in (0, 1):
            _write_run(root, "sam2-3d", "hiera_t", "btcv", seed, level, "bbox",
                       hparams={"lr": lr, "epochs": 3})
    _write_run(root, "resnet", "resnet50", "btcv", 0, 0.7)
    report = collect_study(root, tmp_path / "out", "csv")
    head = report.tables["headline"].data
    sam = head[head["model"] == "sam2-3d"]
    assert list(sam["setting"]) == ["lr=0.0001", "lr=0.001"] and list(sam["n_runs"]) == [2, 2]
    assert sam["dice_mean"].iloc[0] > 0.8 > 0.65 > sam["dice_mean"].iloc[1]  # not pooled into one mean
    assert head.loc[head["model"] == "resnet", "setting"].iloc[0] == ""  # nothing varies: no label
    assert "lr=0.001" in report.headline_text()
    runs = pd.read_csv(tmp_path / "out" / "tables" / "runs.csv")
    assert {json.loads(h)["lr"] for h in runs.loc[runs["model"] == "sam2-3d", "hparams"]} == {1e-4, 1e-3}
    assert len(report.tables["paired_tests"].data) == 2  # each learning rate compared on its own


def test_selection_on_scored_cases_is_listed_not_tabulated(tmp_path, monkeypatch) -> None:
    root = _study(tmp_path, "leaky", monkeypatch)
    _write_run(root, "sam2-3d", "hiera_t", "btcv", 0, 0.8, "bbox")
    same_split = _write_run(root, "sam2-3d", "hiera_t", "btcv", 1, 0.99, "bbox", selection_split="test")
    shared_cases = _write_run(root, "sam2-3d", "hiera_t", "btcv", 2, 0.99, "bbox",
                              selection_cases=[*VAL_CASES, CASES[0], CASES[1]])
    _write_run(root, "resnet", "resnet50", "btcv", 0, 0.7)
    report = collect_study(root, tmp_path / "out", "md,csv")
    head = report.tables["headline"].data
    sam = head[head["model"] == "sam2-3d"].iloc[0]
    assert sam["n_runs"] == 1 and sam["dice_mean"] < 0.9  # the two leaky runs are not averaged in
    listed = report.tables["incomplete_runs"].data.set_index("run")["note"]
    assert listed[same_split["task_id"]] == "not tabulated: checkpoint selected on the scored split 'test'"
    assert listed[shared_cases["task_id"]] == (
        "not tabulated: 2 of 6 selection cases (val) are scored test cases: img0035, img0036")
    assert set(listed.index) == {same_split["task_id"], shared_cases["task_id"]}
    assert report.tables["paired_tests"].data["n_pairs"].tolist() == [len(CASES)]  # one comparison, 1 seed
    assert report.tables["headline"].display.set_index("Model").loc["sam2-3d", "Checkpoint"] == "best on val"
    assert "img0035, img0036" in report.document.read_text()
    assert report.study.runs.set_index("run").loc[same_split["task_id"], "state"] == "completed"
    assert any(w.endswith("metrics.json: not tabulated: checkpoint selected on the scored split 'test'")
               for w in report.warnings)
    only_leaky = _study(tmp_path, "only_leaky", monkeypatch)
    _write_run(only_leaky, "sam2-3d", "hiera_t", "btcv", 0, 0.99, "bbox", selection_split="test")
    with pytest.raises(InputError, match="none of its 1 run.*not tabulated: checkpoint selected on the"):
        collect_study(only_leaky, tmp_path / "out2", "md")
    assert not (tmp_path / "out2").exists()


def test_runs_from_before_round_2_are_malformed_under_schema_2(tmp_path, monkeypatch) -> None:
    """No selection split, checkpoint, hparams or HD95 unit recorded: schema 2 requires them, so such
    a run is listed with its problems and never tabulated (nothing is guessed for it)."""
    root = _study(tmp_path, "old", monkeypatch)
    _write_run(root, "sam2-3d", "hiera_t", "btcv", 0, 0.8, "bbox")
    old = _write_run(root, "resnet", "resnet50", "btcv", 0, 0.7)
    for key in ("selection_split", "selection_cases", "selection_dice", "checkpoint", "hparams", "hd95_unit"):
        del old[key]
    RunDir(root / old["task_id"]).write_metrics(old)
    report = collect_study(root, tmp_path / "out", "md")
    warned = "\n".join(report.warnings)
    assert f"{old['task_id']}/metrics.json" in warned and "selection_split" in warned
    assert set(report.tables["headline"].data["model"]) == {"sam2-3d"}


def test_never_validated_runs_are_marked(tmp_path, monkeypatch) -> None:
    root = _study(tmp_path, "unvalidated", monkeypatch)
    _write_run(root, "sam2-2d", "hiera_t", "refuge", 0, 0.8, "click")
    _write_run(root, "sam2-2d", "hiera_t", "refuge", 1, 0.8, "click", selection_dice=None,
               checkpoint={"select": "best", "epoch": None, "validated": False})
    report = collect_study(root, tmp_path / "out", "md")
    shown = report.tables["headline"].display.iloc[0]
    assert shown["Checkpoint"] == "best on val; never validated: 1 of 2 runs"
    assert report.tables["headline"].data["n_unvalidated"].iloc[0] == 1


def test_hd95_units_never_share_a_column(tmp_path, monkeypatch) -> None:
    root = _study(tmp_path, "units", monkeypatch)
    _write_run(root, "sam2-3d", "hiera_t", "btcv", 0, 0.8, "bbox", hd95_unit="mm", hd95_mean=4.0)
    _write_run(root, "sam2-3d", "hiera_t", "btcv", 1, 0.8, "bbox", hd95_unit="mm", hd95_mean=6.0)
    _write_run(root, "sam2-2d", "hiera_t", "refuge", 0, 0.8, "click", hd95_unit="px", hd95_mean=12.0)
    report = collect_study(root, tmp_path / "out", "md")
    head = report.tables["headline"].data.set_index("model")
    assert head.loc["sam2-3d", "hd95_mm"] == pytest.approx(5.0) and np.isnan(head.loc["sam2-3d", "hd95_px"])
    assert head.loc["sam2-2d", "hd95_px"] == pytest.approx(12.0) and np.isnan(head.loc["sam2-2d", "hd95_mm"])
    shown = report.tables["headline"].display
    assert {"HD95 (mm)", "HD95 (px)"} <= set(shown.columns)
    assert "HD95 (unit not recorded)" not in shown.columns  # no row fills it
    bad = _write_run(root, "sam2-2d", "hiera_s", "refuge", 0, 0.8, "click", hd95_unit="cm")
    report = collect_study(root, tmp_path / "out2", "md")
    assert report.study.runs.set_index("run").loc[bad["task_id"], "state"] == "malformed"
    assert [w.count("hd95_unit 'cm' is not one of ('mm', 'px')") for w in report.warnings] == [1]


def test_holm_by_hand() -> None:
    from medsam2_hpc.report.stats import holm

    # sorted: 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; 0.04 * 1 = 0.04 -> raised to the running max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, math.nan]), [0.03, 0.06, 0.06, math.nan])
    np.testing.assert_allclose(holm([0.5, 0.2]), [0.5, 0.4])
    np.testing.assert_allclose(holm([0.9, 0.8, 0.7]), [1.0, 1.0, 1.0])  # capped at 1


def test_delta_ci_covers_the_known_difference_and_baseline_is_chosen_on_val(tmp_path, monkeypatch) -> None:
    """ours = baseline + 0.1 + noise on every test case: the 95% CI of ΔDice holds 0.1, not 0."""
    root = _study(tmp_path, "known", monkeypatch)
    rng = np.random.default_rng(7)
    cases = [f"case{i:02d}" for i in range(20)]
    base = rng.uniform(0.5, 0.8, len(cases))
    noise = rng.normal(0, 0.03, (2, len(cases)))
    noise -= noise.mean(axis=1, keepdims=True)  # centred: the study's mean differences are exactly 0.1 and 0
    scores = {"resnet": base, "yolo": base + 0.05, "hiera_t": base + 0.1 + noise[0],
              "hiera_s": base + noise[1]}
    variants = {"resnet": "resnet50", "yolo": "yolo11l-seg", "hiera_t": "hiera_t", "hiera_s": "hiera_s"}
    # YOLO is better on test but worse on val: the best baseline must be ResNet (chosen on val)
    selection = {"resnet": 0.75, "yolo": 0.70, "hiera_t": 0.8, "hiera_s": 0.8}
    for name, values in scores.items():
        model = name if name in ("resnet", "yolo") else "sam2-2d"
        task = Task(model=model, variant=variants[name], dataset="refuge", data_path="/data",
                    output_root=str(root.parent), study=root.name)
        per_case = {c: {"cup": float(v)} for c, v in zip(cases, values, strict=True)}
        scores = Scores(float(values.mean()), {"cup": float(values.mean())}, per_case, "px")
        chosen = Selection("val", ["v1", "v2"], selection[name], {"select": "best", "epoch": 1,
                                                                   "validated": True})
        task.run_dir.prepare(task).write_metrics(build_metrics(
            task, split="test", scores=scores, selection=chosen, cost=RunCost(1, 1.0, 1.0, 1.0), hparams={}))
    report = collect_study(root, tmp_path / "out", "csv")
    tests = report.tables["paired_tests"].data.set_index("variant")
    assert set(tests["baseline"]) == {"resnet/resnet50/none"}
    better, same = tests.loc["hiera_t"], tests.loc["hiera_s"]
    assert better["ci_low"] < 0.1 < better["ci_high"] and better["ci_low"] > 0
    assert same["ci_low"] < 0 < same["ci_high"]
    assert better["mean_diff"] == pytest.approx(0.1) and same["mean_diff"] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(tests["p_holm"], holm_by_scipy(tests["p_value"]))
    shown = report.tables["headline"].display.set_index("Variant")
    assert shown.loc["resnet50", "p (Holm)"] == "best baseline (chosen on val)"
    assert re.fullmatch(r"\+0\.\d{3} \[\+0\.\d{3}, \+0\.\d{3}\]",
                        shown.loc["hiera_t", "ΔDice vs best baseline [95% CI]"])


def holm_by_scipy(p: pd.Series) -> np.ndarray:
    """Holm for two tests, spelled out: the smaller p doubled, the larger kept but not below it."""
    low, high = sorted(p)
    adjusted = {low: min(1, 2 * low), high: max(min(1, 2 * low), high)}
    return np.array([adjusted[v] for v in p])


def test_sizes_in_size_order() -> None:
    from medsam2_hpc.report.labels import variant_rank

    shuffled = ["hiera_l", "sam2.1_hiera_t", "hiera_b+", "hiera_t", "hiera_s"]
    assert sorted(shuffled, key=lambda v: variant_rank("sam2-3d", v)) == [
        "hiera_t", "hiera_s", "hiera_b+", "hiera_l", "sam2.1_hiera_t"]
    yolo = ["yolo11x-seg", "yolo11l-seg", "yolo11n-seg", "yolo11m-seg", "yolo11s-seg"]
    assert sorted(yolo, key=lambda v: variant_rank("yolo", v)) == [f"yolo11{s}-seg" for s in "nsmlx"]
    resnets = ["resnet50", "resnet101", "my_net", "resnet18"]
    assert sorted(resnets, key=lambda v: variant_rank("resnet", v)) == [
        "resnet18", "resnet50", "resnet101", "my_net"]  # unregistered variants last


def test_box_plot_draws_every_case_and_figures_are_pdf_and_200_dpi_png(tmp_path, monkeypatch) -> None:
    from PIL import Image

    from medsam2_hpc.report import plots

    root = _study(tmp_path, "figures", monkeypatch)
    for variant in ("hiera_l", "hiera_t", "hiera_b+"):
        _write_run(root, "sam2-3d", variant, "btcv", 0, 0.8, "bbox")
    closed = []
    monkeypatch.setattr(plots.plt, "close", closed.append)
    report = collect_study(root, tmp_path / "out", "md")
    box = next(fig for fig in closed if fig.axes[0].get_title().startswith("btcv"))
    ax = box.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "sam2-3d\nhiera_t\nbbox", "sam2-3d\nhiera_b+\nbbox", "sam2-3d\nhiera_l\nbbox"]
    points = [np.asarray(c.get_offsets()) for c in ax.collections]
    assert [len(p) for p in points] == [len(CASES)] * 3
    assert [round(float(np.median(p[:, 0]))) for p in points] == [1, 2, 3]
    for name in ("dice_boxplot", "btcv_organ_heatmap", "dice_vs_time"):
        png, pdf = tmp_path / "out" / "plots" / f"{name}.png", tmp_path / "out" / "plots" / f"{name}.pdf"
        assert png in report.files and pdf in report.files
        assert pdf.read_bytes()[:5] == b"%PDF-"
        assert Image.open(png).info["dpi"] == pytest.approx((200, 200), abs=0.1)


def test_provenance_names_every_problem_with_the_round_2_fields() -> None:
    from medsam2_hpc.report.provenance import NONE, read_provenance

    data = {"split": "test", "per_case": {"a": {}}, "selection_split": 3, "selection_cases": [1, 2],
            "selection_dice": "high", "hd95_unit": "cm", "hparams": [], "checkpoint": {"select": "newest",
                                                                                       "epoch": 1.5}}
    provenance, problems = read_provenance(data)
    assert problems == [
        "key 'selection_split' should be str, got int",
        "key 'selection_dice' should be float/int/NoneType, got str",
        "checkpoint.select 'newest' is not one of ('best', 'last', 'given')",
        "checkpoint.epoch should be int or null, got float",
        "checkpoint.validated should be true or false",
        "hd95_unit 'cm' is not one of ('mm', 'px')",
        "key 'hparams' should be dict, got list",
        "selection_cases should be a list of case ids (strings)",
    ]
    fine, problems = read_provenance({"split": "test", "per_case": {}, "selection_split": None})
    assert problems == [] and fine.selection_split == NONE and not fine.overlap
