"""`dlx report`: a sweep's (or an experiment's) runs read back from MLflow as one row per configuration,
seeds collapsed into mean +- 95% confidence interval, with learning curves and final-metric plots.

collect   MLflow -> runs (params, tags, final metrics, outcome) and metric histories
stats     confidence intervals, curve averaging, Welch's t-test, the one-line study finding
table     runs -> rows (grouping, counts of failed/pruned/killed, best row) -> table/markdown/csv/json
plots     learning curves per configuration and the final metric against the swept factor
cli       the command: argument parsing, files under --out, artifacts on the parent run

Importing this package is light: mlflow, matplotlib and scipy load inside the functions that use them.
"""

from dlx.report.stats import Summary, finding, get_finding, mean_ci, mean_curve, register_finding

__all__ = ["Summary", "finding", "get_finding", "mean_ci", "mean_curve", "register_finding"]
