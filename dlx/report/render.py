"""A report as a rich table (the terminal), Markdown (report.md), CSV (report.csv) and JSON (report.json).

The four agree cell for cell: CSV and JSON keep full precision, the table and Markdown show 4 decimals.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from dlx.report.stats import CONFIDENCE, format_summary
from dlx.report.table import Report, Row

METHOD = (f"mean ± half-width of the {CONFIDENCE:.0%} confidence interval over seeds (Student t, n-1 degrees "
          f"of freedom; n=1 shows no interval); only runs that finished ok enter the mean, failed, pruned and "
          f"killed runs are counted in their own columns")


def _config_columns(report: Report) -> list[str]:
    return report.by or ["configuration"]


def _config_cells(report: Report, row: Row) -> list[str]:
    if not report.by:
        return [row.label]
    return ["-" if row.config[k] is None else str(row.config[k]) for k in report.by]


def _metric_cell(row: Row, metric: str) -> str:
    s = row.metrics[metric]
    text = format_summary(s)
    return f"{text} (n={s.n})" if s.mean is not None and s.n != row.n else text


def best_note(report: Report) -> str:
    m = report.metrics[0]
    best = report.best
    which = f"{best.label}" if best else "none (no values)"
    return f"best on {m} ({report.directions[m]}): {which}"


# ---------------------------------------------------------------------------------------------- terminal
def to_rich(report: Report):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=report.title, title_justify="left", title_style="bold")
    for col in _config_columns(report):
        table.add_column(col, style="bold")
    table.add_column("n", justify="right")
    for m in report.metrics:
        table.add_column(f"{m}\nmean ± 95% CI", justify="right")
    for c in report.count_columns:
        table.add_column(c, justify="right")
    table.add_column("best")  # the row is also bold green: the mark survives a terminal without colour
    for row in report.rows:
        cells = [*[escape(c) for c in _config_cells(report, row)], str(row.n),
                 *[_metric_cell(row, m) for m in report.metrics],
                 *[_count_cell(row.counts.get(c, 0), rich=True) for c in report.count_columns],
                 "★ best" if row.best else ""]
        table.add_row(*cells, style="bold green" if row.best else None)
    return table


def _count_cell(count: int, rich: bool = False) -> str:
    if rich and count:
        return f"[red]{count}[/red]"
    return str(count)


# ---------------------------------------------------------------------------------------------- markdown
def markdown_table(report: Report) -> str:
    head = [*_config_columns(report), "n", *[f"{m} (mean ± 95% CI)" for m in report.metrics],
            *report.count_columns, "best"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in report.rows:
        cells = [*_config_cells(report, row), str(row.n), *[_metric_cell(row, m) for m in report.metrics],
                 *[str(row.counts.get(c, 0)) for c in report.count_columns]]
        if row.best:
            cells = [f"**{c}**" for c in cells] + ["**best**"]
        else:
            cells.append("")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def to_markdown(report: Report) -> str:
    parts = [f"# {report.title}", report.description]
    if report.notes:
        parts.append("\n".join(f"- {n}" for n in report.notes))
    parts += [markdown_table(report), f"{METHOD}. Bold: {best_note(report)}."]
    parts += [f"![{Path(name).stem.replace('_', ' ')}]({name})" for name in report.images]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- csv / json
def csv_header(report: Report) -> list[str]:
    cols = [*_config_columns(report), "n"]
    for m in report.metrics:
        cols += [f"{m} mean", f"{m} ci95", f"{m} sd", f"{m} n"]
    return [*cols, *report.count_columns, "best"]


def to_csv(report: Report) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(csv_header(report))
    for row in report.rows:
        cells: list = [*_config_cells(report, row), row.n]
        for m in report.metrics:
            s = row.metrics[m]
            cells += ["" if v is None else repr(v) for v in (s.mean, s.half_width, s.std)] + [s.n]
        writer.writerow([*cells, *[row.counts.get(c, 0) for c in report.count_columns], int(row.best)])
    return buf.getvalue()


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def to_dict(report: Report) -> dict:
    rows = []
    for row in report.rows:
        rows.append({
            "label": row.label, "config": row.config, "n": row.n, "best": row.best,
            "counts": {c: row.counts.get(c, 0) for c in report.count_columns},
            "metrics": {m: {"mean": s.mean, "ci95": s.half_width, "sd": s.std, "n": s.n, "values": list(s.values)}
                        for m, s in row.metrics.items()},
            "runs": [{"run_id": r.run_id, "outcome": r.outcome, "status": r.status} for r in row.runs],
        })
    curves = {label: {m: {"step": c.steps, "mean": c.mean, "ci95": c.half_width, "min": c.lo, "max": c.hi,
                          "n": c.n} for m, c in per.items()} for label, per in report.curves.items()}
    return {"title": report.title, "description": report.description, "by": report.by,
            "metrics": report.metrics, "directions": report.directions, "confidence": CONFIDENCE,
            "best": report.best.label if report.best else None, "notes": report.notes, "rows": rows,
            "curves": curves, "images": report.images}


def to_json(report: Report) -> str:
    def clean(obj):
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [clean(v) for v in obj]
        return _finite(obj)

    return json.dumps(clean(to_dict(report)), indent=2) + "\n"
