"""The collector: every run's metrics.json of a study -> comparison tables, plots, MODEL_COMPARISON.md.

``collect_study(study_dir, out_dir, formats, with_published) -> Report``; modules: ``collect``
(reading run dirs), ``stats`` (paired tests), ``tables``, ``formats`` (md/csv/tex), ``plots``,
``published`` (literature numbers), ``build`` (the assembly).
"""

from .build import Report, collect_study

__all__ = ["Report", "collect_study"]
