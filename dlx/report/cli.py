"""`dlx report <parent run id | experiment>`: read the runs back from MLflow, print one row per configuration
(mean +- 95% CI over seeds), write report.{csv,md,json} and the plots, and log them to the parent run."""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from pathlib import Path

from dlx.report.collect import ReportError
from dlx.report.stats import direction

DEFAULT_METRICS = ("test/acc", "val/acc")
CURVE_METRICS = ("val/acc", "train/loss")
FORMATS = ("table", "markdown", "csv", "json")
ARTIFACT_DIR = "report"  # where the files go on the parent run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dlx report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A sweep's trials (or an experiment's runs) as one row per configuration: mean ± 95% CI\n"
                    "over seeds, with counts of failed, pruned and killed runs. report.{csv,md,json}, learning\n"
                    "curves and final-metric plots go to --out and are logged to the sweep's parent run.",
        epilog="examples (the run id or experiment comes first: --metric and --by take several values):\n"
               "  dlx report 3f2a...c1\n"
               "  dlx report dlx --by optimizer.name --metric test/loss val/acc\n"
               "  dlx report 3f2a...c1 --format csv > optimizers.csv")
    p.add_argument("target", help="a sweep's parent run id, or an experiment name (its runs, sweep parents left out)")
    p.add_argument("--metric", "-m", action="extend", nargs="+", default=None, metavar="M",
                   help="metrics to report, the first picks the best row; NAME:max or NAME:min sets the direction "
                        "(default: the study's metrics, else test/acc val/acc; max for acc-like, min otherwise)")
    p.add_argument("--by", "-b", action="extend", nargs="+", default=None, metavar="KEY",
                   help="params that make a configuration (default: the study's factor, else the swept keys, else "
                        "the params that vary; seeds are always collapsed)")
    p.add_argument("--format", "-f", choices=FORMATS, default="table",
                   help="table (rich, default); markdown, csv or json print that format to stdout instead")
    p.add_argument("--uri", default=None, help="tracking URI (default: $MLFLOW_TRACKING_URI or outputs/mlflow.db)")
    p.add_argument("--out", "-o", default=None, help="output folder (default: outputs/reports/<run id or experiment>)")
    p.add_argument("--no-log", action="store_true", help="write files only; log nothing to the parent run")
    return p


def split_list(items: list[str] | None) -> list[str]:
    return [x.strip() for item in items or [] for x in item.split(",") if x.strip()]


def parse_metric(spec: str, target=None) -> tuple[str, str]:
    """'test/loss' -> ('test/loss', 'min'); 'sharpness:max' -> ('sharpness', 'max'); the sweep's
    objective takes the sweep's direction."""
    from dlx.report.collect import sweep_direction

    name, _, mode = spec.rpartition(":")
    if name and mode in ("max", "min"):
        return name, mode
    return spec, (sweep_direction(target, spec) if target is not None else None) or direction(spec)


def report_main(args: list[str]) -> int:
    ns = parser().parse_args(args)
    try:
        return _report(ns)
    except ReportError as exc:
        print(f"dlx report: error: {exc}", file=sys.stderr)
        return exc.code


def choose_metrics(ns, target) -> list[tuple[str, str]]:
    from dlx.report.collect import available_metrics

    available = available_metrics(target.runs)
    if ns.metric:
        chosen = [parse_metric(m, target) for m in split_list(ns.metric)]
        unknown = [m for m, _ in chosen if m not in available]
        if unknown:
            raise ReportError(f"--metric {', '.join(unknown)}: not logged by any run of {target.ref}; "
                              f"metrics: {', '.join(available) or 'none'}", 2)
        return chosen
    wanted = split_list([target.study["metrics"]]) if target.study.get("metrics") else list(DEFAULT_METRICS)
    objective = target.parent.params.get("sweep.objective", "") if target.parent is not None else ""
    if objective.startswith("cv/") and objective not in wanted:  # trials judged on the K-fold mean log it alone
        wanted.insert(0, objective)
    chosen = [parse_metric(m, target) for m in wanted]
    present = [(m, d) for m, d in chosen if m in available]
    return present or chosen  # nothing logged yet (every trial failed): keep the empty columns


def choose_by(ns, target) -> list[str]:
    from dlx.report.collect import default_by

    if not ns.by:
        return default_by(target)
    by = split_list(ns.by)
    unknown = [k for k in by if all(r.value(k) is None for r in target.runs)]
    if unknown:
        keys = sorted({k for r in target.runs for k in r.params})
        raise ReportError(f"--by {', '.join(unknown)}: no run of {target.ref} has this param; params: "
                          f"{', '.join(keys) or 'none'}", 2)
    return by


def register_studies() -> None:
    """Import dlx.report.findings and every dlx.report.findings_<study> module: each registers its studies'
    effect checks and figures, so a new study adds its module and nothing else."""
    import importlib
    import pkgutil

    import dlx.report

    for module in pkgutil.iter_modules(dlx.report.__path__):
        if module.name == "findings" or module.name.startswith("findings_"):
            importlib.import_module(f"dlx.report.{module.name}")


def build_report(client, target, by: list[str], metrics: list[tuple[str, str]]):
    """The rows, curves and study notes of a report (no files yet)."""
    register_studies()
    from dlx.report.collect import available_metrics, histories
    from dlx.report.stats import get_finding, mean_curve
    from dlx.report.table import Report, build_rows, mark_best

    names = [m for m, _ in metrics]
    directions = dict(metrics)
    levels = split_list([target.study.get("levels", "")]) if len(by) == 1 else []
    rows = build_rows(target.runs, by, names, order=levels)
    mark_best(rows, names[0], directions[names[0]])
    logged = available_metrics(target.runs)
    curves: dict = {}
    for row in rows:
        ids = [r.run_id for r in row.ok_runs]
        if ids:
            curves[row.label] = {m: mean_curve(list(histories(client, ids, m).values()))
                                 for m in CURVE_METRICS if m in logged}
    notes = []
    study = target.study
    if study.get("name") or study.get("statement"):
        notes.append(f"study: {study.get('name', 'unnamed')}"
                     + (f" -- {study['statement']}" if study.get("statement") else ""))
        if study.get("expected"):
            notes.append(f"expected: {study['expected']}")
        check = get_finding(study.get("name"))
        reads = {"client": client} if "client" in inspect.signature(check).parameters else {}  # artifacts
        notes.append(check(rows, names[0], directions[names[0]], **reads))
    if target.parent is not None:
        from dlx.report.parent import parent_notes

        notes += parent_notes(target.parent.metrics)
    if target.kind == "sweep":
        p = target.parent
        what = f"sweep parent run {p.run_id}" + (f" ({p.name})" if p.name else "")
    else:
        what = "all runs but sweep parents"
    n_conf = f"{len(rows)} configuration{'s' * (len(rows) != 1)}"
    grouped = f"grouped by {', '.join(by)}" if by else "one configuration (nothing varies but seeds)"
    description = (f"experiment {target.experiment}, {what}: {len(target.runs)} runs in {n_conf}, {grouped}; "
                   f"seeds collapsed")
    name = f"study {study['name']}" if study.get("name") else (target.parent.name if target.parent else "")
    title = f"dlx report: {name or target.ref}"
    return Report(title, description, by, names, directions, rows, notes, curves)


def write_files(report, out: Path, client=None, study: str | None = None) -> list[Path]:
    from dlx.report import plots, render
    from dlx.report.findings import get_study_plots

    register_studies()

    out.mkdir(parents=True, exist_ok=True)
    images = []
    curve_metrics = [m for m in CURVE_METRICS if any(m in per for per in report.curves.values())]
    if curve_metrics:
        images.append(plots.plot_curves(report.curves, curve_metrics, out / "learning_curves.png"))
    if any(s.mean is not None for r in report.rows for s in r.metrics.values()):
        factor = report.by[0] if len(report.by) == 1 else ""
        images.append(plots.plot_final(report.rows, factor, report.metrics, out / "final_metrics.png"))
    extra = get_study_plots(study)
    if extra is not None and client is not None:
        pngs, notes = extra(client, report, out)
        images += pngs
        report.notes += notes
    report.images = [p.name for p in images]
    files = []
    for name, text in (("report.csv", render.to_csv(report)), ("report.md", render.to_markdown(report)),
                       ("report.json", render.to_json(report))):
        (out / name).write_text(text, encoding="utf-8")
        files.append(out / name)
    return files + images


def _report(ns) -> int:
    from dlx.report import render
    from dlx.report.collect import load_target, open_client
    from dlx.tracking import resolve_uri

    uri, _ = resolve_uri(ns.uri)
    client = open_client(uri)
    # after mlflow's import, which sets its loggers up: the store's migrations need not be announced
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    target = load_target(client, ns.target, uri)
    report = build_report(client, target, choose_by(ns, target), choose_metrics(ns, target))
    out = Path(ns.out) if ns.out else Path("outputs") / "reports" / target.slug
    files = write_files(report, out, client, target.study.get("name"))
    logged = None
    if target.parent is not None and not ns.no_log:
        for f in files:
            client.log_artifact(target.parent.run_id, str(f), ARTIFACT_DIR)
        logged = f"logged to run {target.parent.run_id} under {ARTIFACT_DIR}/"
    where = f"wrote {', '.join(f.name for f in files)} to {out}" + (f"; {logged}" if logged else "")
    if ns.format == "table":
        _print_table(report)
        print(where)
    else:
        text = {"markdown": render.to_markdown, "csv": render.to_csv, "json": render.to_json}[ns.format](report)
        sys.stdout.write(text)
        print(where, file=sys.stderr)
    return 0


def _print_table(report) -> None:
    from rich.console import Console

    from dlx.report.render import METHOD, best_note, to_rich

    table = to_rich(report)
    console = Console()
    if not console.is_terminal:  # piped or redirected: never cut a cell
        console = Console(width=max(console.width, Console(width=100_000).measure(table).maximum))
    console.print(report.description, markup=False, soft_wrap=True)
    console.print(table)
    console.print(f"{METHOD}; {best_note(report)}", style="dim", markup=False, soft_wrap=True)
    for note in report.notes:
        console.print(note, markup=False, soft_wrap=True, style="bold" if note.startswith("finding") else None)
