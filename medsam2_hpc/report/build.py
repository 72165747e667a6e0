"""``collect_study``: a study directory in, the comparison (tables, plots, MODEL_COMPARISON.md) out.

The one function behind ``medsam2-hpc collect`` and the demo. It checks its arguments and
reads the study before writing anything, so bad input leaves no partial output.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_text
from ..errors import InputError
from ..inputs import check_output_dir
from ..registry import dataset_kind, dataset_names
from . import stats, tables
from .collect import Study, load_study
from .formats import parse_formats, to_markdown, write_table
from .plots import draw_plots
from .pool import auto_workers, process_pool

__all__ = ["Report", "collect_study"]

DOCUMENT = "MODEL_COMPARISON.md"
_MAX_ERROR_DETAILS = 50


@dataclass
class Report:
    """What ``collect_study`` found and wrote; ``str(report)`` is the terminal summary."""

    study: Study
    out_dir: Path
    tables: dict[str, tables.Table]
    files: list[Path] = field(default_factory=list)
    workers: int = 1  # processes that read the runs and drew the figures (1: this one alone)

    @property
    def warnings(self) -> list[str]:
        return self.study.warnings

    @property
    def document(self) -> Path:
        return self.out_dir / DOCUMENT

    def state_counts(self) -> dict[str, int]:
        counts = self.study.runs["state"].value_counts()
        return {str(k): int(v) for k, v in counts.sort_index().items()}

    def headline_text(self) -> str:
        """The headline table as a Markdown pipe table (readable in a terminal as is)."""
        return to_markdown(self.tables["headline"].display)

    def __str__(self) -> str:
        runs = self.study.runs
        counts = ", ".join(f"{n} {state}" for state, n in self.state_counts().items())
        return (f"{len(runs)} runs in {self.study.path} ({counts}); {int(runs['ok'].sum())} in the tables\n\n"
                f"{self.headline_text()}\nreport: {self.document}")


def collect_study(study_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                  formats: str | Sequence[str] = ("md", "csv", "tex"),
                  with_published: bool = False, workers: int | None = None) -> Report:
    """Collect every run under ``study_dir`` into ``out_dir`` (default ``<study_dir>/comparison``).

    ``workers``: processes that read runs and draw figures (1: none); None: ``pool.auto_workers``.

    Raises:
        InputError: ``study_dir`` is not a study directory or a format is unknown.
    """
    chosen = parse_formats(formats)
    if out_dir is not None:
        check_output_dir(out_dir, "--out")
    workers = auto_workers(study_dir) if workers is None else workers
    with process_pool(workers) if workers > 1 else nullcontext() as pool:
        study = load_study(study_dir, pool)
        if study.scored.empty:  # nothing to tabulate: say why instead of failing inside pandas
            first = f": {study.warnings[0]}" if study.warnings else ""
            raise InputError(f"study dir {str(study.path)!r}: none of its {len(study.runs)} run(s) has a "
                             f"valid metrics.json that may be tabulated{first}")
        out = Path(out_dir) if out_dir is not None else study.path / "comparison"
        cases = stats.case_scores(study)
        sections = _dataset_sections(study, with_published)
        plots = draw_plots(study.scored, cases, sections.get("btcv_organs"), out / "plots",
                           pool)  # drawn while the tables build
        tests = stats.paired_tests(study, cases)
        built = {"headline": tables.headline(study, tests, with_published), **sections}
        built["paired_tests"] = tables.paired(tests, built["headline"].data)
        built["incomplete_runs"] = tables.incomplete(study)
        report = Report(study, out, built, workers=workers if pool is not None else 1)
        for table in built.values():
            report.files += write_table(table, out / "tables", chosen)
        report.files.append(write_text(out / "tables" / "runs.csv", study.runs.to_csv(index=False)))
        figures = plots()
    report.files += figures
    report.files.append(write_text(report.document, _document(report, figures, with_published)))
    return report


def _dataset_sections(study: Study, with_published: bool) -> dict[str, tables.Table]:
    """The tables each scored dataset names in the registry, datasets in alphabetical order."""
    built = {}
    for dataset in sorted(set(study.scored["dataset"]) & set(dataset_names())):
        for section in dataset_kind(dataset).sections:
            table = tables.SECTIONS[section](study, dataset, with_published)
            built[table.name] = table
    return built


def _section(table: tables.Table) -> str:
    caption = f"\n{table.caption}\n" if table.caption else ""
    return f"## {table.title}\n\n{to_markdown(table.display)}{caption}"


def _document(report: Report, plots: list[Path], with_published: bool) -> str:
    """MODEL_COMPARISON.md: every table, the plots, and every run left out with its reason."""
    study, runs = report.study, report.study.runs
    counts = ", ".join(f"{n} {state}" for state, n in report.state_counts().items())
    parts = [f"# Model comparison: {study.path.name}\n",
             f"Collected from {len(runs)} run directories ({counts}); {int(runs['ok'].sum())} have valid "
             "metrics and are in the tables below. One row per model, size, prompt and hyper-parameter set "
             "(the hyper-parameters that differ between rows are in the row); means are over seeds"
             f"{_volumetric_note(study)}. Checkpoints are selected on val and scored on test: a run selected "
             "on cases it is scored on is not in the tables (see the last section).\n"]
    if with_published:
        parts.append("Rows whose model reads `published: ...` are numbers from the literature on their own "
                     "splits and preprocessing (see the source in brackets), shown for orientation only.\n")
    if report.warnings:
        parts.append("## Warnings\n\n" + "".join(f"- {w}\n" for w in report.warnings))
    for name, table in report.tables.items():
        if name != "incomplete_runs" and not table.empty:
            parts.append(_section(table))
    if plots:
        pngs = [p for p in plots if p.suffix == ".png"]
        parts.append("## Plots\n\nEach figure is also a PDF beside its PNG.\n\n" + "".join(
            f"![{p.stem}]({p.relative_to(report.out_dir).as_posix()})\n" for p in pngs))
    parts.append(_incomplete_section(report.tables["incomplete_runs"]))
    return "\n".join(parts)


def _volumetric_note(study: Study) -> str:
    scored = set(study.scored["dataset"])
    names = [d.upper() for d in dataset_names() if d in scored and dataset_kind(d).volumetric]
    return f"; Dice on {', '.join(names)} is volumetric" if names else ""


def _incomplete_section(table: tables.Table) -> str:
    if table.empty:
        return f"## {table.title}\n\nNone: every run has valid metrics.\n"
    text = _section(table)
    failed = table.data[table.data["error"].astype(bool)]
    for _, row in failed.head(_MAX_ERROR_DETAILS).iterrows():
        text += (f"\n<details><summary>{row['run']}: error tail</summary>\n\n"
                 f"```\n{row['error']}\n```\n</details>\n")
    if len(failed) > _MAX_ERROR_DETAILS:
        text += f"\n{len(failed) - _MAX_ERROR_DETAILS} more error tails in tables/runs.csv\n"
    return text
