"""Write a table in the formats researchers paste: GitHub Markdown, CSV, LaTeX booktabs.

CSV carries the numbers (``Table.data``, parses back with pandas); Markdown and LaTeX carry
the formatted text (``Table.display``). Cell text is made safe for each format: pipes and
newlines in Markdown, LaTeX's special characters (``hiera_t``) in LaTeX.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..atomic import write_text
from ..options import look_up
from .tables import Table

__all__ = ["FORMATS", "parse_formats", "to_markdown", "to_latex", "write_table"]

FORMATS = ("md", "csv", "tex")
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "Δ": r"$\Delta$", "<": r"$<$", ">": r"$>$"}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIAL))


def parse_formats(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"md,csv"`` -> ("md", "csv"); InputError names an unknown format and the near miss."""
    items = text.split(",") if isinstance(text, str) else list(text)
    chosen = tuple(dict.fromkeys(look_up(item.strip().lower(), FORMATS, "--format") for item in items
                                 if item.strip()))
    if not chosen:
        look_up("", FORMATS, "--format")
    return chosen


def _md_cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " / ")


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub pipe table (tabulate), every cell as text so numbers keep their formatting."""
    if frame.empty:
        return "| " + " | ".join(map(_md_cell, frame.columns)) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return frame.astype(str).map(_md_cell).to_markdown(index=False, disable_numparse=True) + "\n"


def latex_escape(text: object) -> str:
    return _LATEX_RE.sub(lambda m: _LATEX_SPECIAL[m.group()], str(text).replace("\n", " "))


def to_latex(frame: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs tabular (``\\usepackage{booktabs}``), inside a table float when captioned."""
    escaped = frame.astype(str).map(latex_escape)
    escaped.columns = [latex_escape(c) for c in frame.columns]
    styler = escaped.style.hide(axis="index")
    kwargs = {"caption": latex_escape(caption), "label": label, "position": "htbp"} if caption else {}
    return styler.to_latex(hrules=True, column_format="l" * len(frame.columns), **kwargs)


def write_table(table: Table, out_dir: Path, formats: tuple[str, ...]) -> list[Path]:
    """``<out_dir>/<table.name>.<fmt>`` for each format, written atomically."""
    written = []
    for fmt in formats:
        path = out_dir / f"{table.name}.{fmt}"
        if fmt == "csv":
            text = table.data.to_csv(index=False)
        elif fmt == "md":
            text = f"**{table.title}**\n\n{to_markdown(table.display)}" + (
                f"\n{table.caption}\n" if table.caption else "")
        else:
            text = to_latex(table.display, f"{table.title}. {table.caption}".strip(), f"tab:{table.name}")
        written.append(write_text(path, text))
    return written
