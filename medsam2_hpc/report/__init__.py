"""The collector: every run's metrics.json of a study -> comparison tables, plots, MODEL_COMPARISON.md.

``collect_study(study_dir, out_dir, formats, with_published) -> Report``; modules: ``collect``
(reading run dirs, with ``read``), ``provenance`` (selection split, checkpoint, hyper-parameters,
HD95 unit; runs selected on scored cases stay out), ``stats`` (ΔDice with bootstrap CI against the
best baseline chosen on val, Wilcoxon, Holm), ``labels`` (row order and labels), ``tables``,
``formats`` (md/csv/tex), ``plots`` (PDF + PNG), ``published`` (literature numbers, per metric),
``build`` (the assembly).
"""

from .build import Report, collect_study

__all__ = ["Report", "collect_study"]
