"""Reading a report's runs back from MLflow: a sweep's parent run and its trials, or an experiment's runs,
each with its params, tags, latest metric values and outcome (ok, failed, pruned, killed, running)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

# seeds are what a report collapses over, never what tells configurations apart
SEED_KEYS = frozenset({"seed", "trainer.seed", "dataset.split_seed"})
# bookkeeping that varies from run to run without defining the configuration
SKIP_PREFIXES = ("tracking.", "trial.", "data.", "sweep.", "study.", "hydra.", "trainer.checkpoint.")
SWEPT_PREFIXES = ("sweep.param.", "sweep.params.")  # a sweep parent's param per searched key: its spec
SKIP_KEYS = frozenset({"model.num_params", "trainer.progress", "trainer.resume"})
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_PAGE = 1000


class ReportError(Exception):
    """A report that cannot be made; the message names what was asked for and what exists. `code` is the
    exit status: 1 for what the store lacks, 2 for a bad option."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@dataclass
class RunRecord:
    run_id: str
    name: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]  # the latest value of each metric

    @property
    def outcome(self) -> str:
        """dlx.outcome when the run set it, else from the status (a run still going is 'running')."""
        if "dlx.outcome" in self.tags:
            return self.tags["dlx.outcome"]
        return {"FINISHED": "ok", "FAILED": "failed", "KILLED": "killed"}.get(self.status, "running")

    @property
    def ok(self) -> bool:
        return self.outcome == "ok" and self.status == "FINISHED"

    def value(self, key: str) -> str | None:
        """A param; a config group name (`optimizer` -> optimizer.name) or its dlx.choice tag also work."""
        if key in self.params:
            return self.params[key]
        if f"{key}.name" in self.params:
            return self.params[f"{key}.name"]
        return self.tags.get(f"dlx.choice.{key}")


@dataclass
class Target:
    """What a report covers: a parent run's trials (kind 'sweep') or an experiment's runs."""

    kind: str
    ref: str  # the parent run id or the experiment name, as given
    experiment: str
    runs: list[RunRecord]
    parent: RunRecord | None = None
    study: dict[str, str] = field(default_factory=dict)  # statement, metrics, factor, expected, name

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.ref)


def open_client(uri: str):
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ReportError(f"no MLflow store at {uri}; `dlx train` or `dlx sweep` creates it")
    from dlx.store import open_client as open_store_client

    return open_store_client(uri)  # a store that another process is migrating is waited for, not raced


def record(run) -> RunRecord:
    return RunRecord(run.info.run_id, run.info.run_name or "", run.info.status, dict(run.data.params),
                     dict(run.data.tags), dict(run.data.metrics))


def search_all(client, experiment_ids: list[str], filter_string: str = "") -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=_PAGE,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def load_target(client, ref: str, uri: str) -> Target:
    """A parent run id -> its child runs; an experiment name -> its runs without the sweep parents."""
    experiments = client.search_experiments()
    names = {e.experiment_id: e.name for e in experiments}
    if _RUN_ID.match(ref):
        try:
            run = client.get_run(ref)
        except Exception:  # noqa: BLE001 - MLflow raises its own error for an unknown id
            run = None
        if run is not None:
            parent = record(run)
            children = [record(r) for r in search_all(client, list(names), f"tags.`mlflow.parentRunId` = '{ref}'")]
            if not children:
                raise ReportError(_no_children(parent))
            exp = names.get(run.info.experiment_id, "")
            return Target("sweep", ref, exp, children, parent, study_tags(parent))
    for exp_id, name in names.items():
        if name == ref:
            runs = [record(r) for r in search_all(client, [exp_id])]
            parents = {r.tags.get("mlflow.parentRunId") for r in runs}
            trials = [r for r in runs if r.run_id not in parents and not any(k.startswith("sweep.") for k in r.params)]
            if not trials:
                raise ReportError(f"experiment '{ref}' has no runs to report")
            return Target("experiment", ref, ref, trials)
    known = ", ".join(sorted(names.values())) or "none"
    raise ReportError(f"no experiment or run '{ref}' in {uri}; experiments: {known} "
                      f"(give an experiment name or a sweep's parent run id)")


def _no_children(run: RunRecord) -> str:
    parent = run.tags.get("mlflow.parentRunId")
    if parent:
        return (f"run {run.run_id} is one trial of the sweep whose parent run is {parent}; "
                f"report the sweep with: dlx report {parent}")
    return (f"run {run.run_id} has no child runs, so it is not a sweep's parent run; give a sweep's parent "
            f"run id, or an experiment name to report all of its runs")


def study_tags(parent: RunRecord) -> dict[str, str]:
    """The parent's study description: name, statement, metrics, factor, expected (those it has)."""
    out = {k[len("dlx.study."):]: v for k, v in parent.tags.items() if k.startswith("dlx.study.")}
    if "dlx.study" in parent.tags:
        out["name"] = parent.tags["dlx.study"]
    return out


def histories(client, run_ids: list[str], metric: str) -> dict[str, dict[int, float]]:
    """{run id: {step: value}}; where a step was logged twice (a resumed run) the later point wins."""
    out = {}
    for run_id in run_ids:
        points = sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
        out[run_id] = {int(m.step): float(m.value) for m in points}
    return out


# ---------------------------------------------------------------------------------------------- grouping keys
def is_bookkeeping(key: str) -> bool:
    return key in SEED_KEYS or key in SKIP_KEYS or key.startswith(SKIP_PREFIXES)


def varying_keys(runs: list[RunRecord]) -> list[str]:
    """Params whose values differ across the runs, seeds and bookkeeping left out."""
    keys = sorted({k for r in runs for k in r.params if not is_bookkeeping(k)})
    return [k for k in keys if len({r.params.get(k) for r in runs}) > 1]


def minimal_keys(runs: list[RunRecord], keys: list[str]) -> list[str]:
    """The fewest keys that split the runs as all `keys` do: `optimizer.name` first, so `optimizer.betas`
    (which only follows the optimizer's name) is left out."""
    ordered = sorted(keys, key=lambda k: (not k.endswith(".name"), len({r.params.get(k) for r in runs}), k))
    chosen: list[str] = []
    groups = 1
    for key in ordered:
        n = len({tuple(r.params.get(k) for k in [*chosen, key]) for r in runs})
        if n > groups:
            chosen.append(key)
            groups = n
    return chosen


def default_by(target: Target) -> list[str]:
    """The study's factor; else the keys the sweep searched (seeds left out); else the varying params."""
    if target.study.get("factor"):
        return [k.strip() for k in target.study["factor"].split(",") if k.strip()]
    if target.parent is not None:
        swept = [k.split(".", 2)[2] for k in sorted(target.parent.params) if k.startswith(SWEPT_PREFIXES)]
        swept = [k for k in swept if k not in SEED_KEYS and any(r.value(k) is not None for r in target.runs)]
        if swept:
            return swept
    return minimal_keys(target.runs, varying_keys(target.runs))


def sweep_direction(target: Target, metric: str) -> str | None:
    """'max' or 'min' when the sweep optimised `metric` in a stated direction, else None."""
    params = target.parent.params if target.parent is not None else {}
    if params.get("sweep.objective") == metric:
        return {"maximize": "max", "minimize": "min"}.get(params.get("sweep.direction", ""))
    return None


def available_metrics(runs: list[RunRecord]) -> list[str]:
    return sorted({k for r in runs for k in r.metrics})


def copy_first_artifact(client, runs, name: str, dest: Path):
    """Copy the artifact `name` of the first of `runs` (lowest seed first) that logged it to dest; that run, or
    None when none did (a run without diagnostics=sequence has no attention map, say)."""
    import os
    import shutil
    import tempfile

    from dlx.tracking import local_path

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr is for dlx's own lines
    for run in sorted(runs, key=lambda r: float(r.params.get("seed") or 0)):
        local = local_path(client.get_run(run.run_id).info.artifact_uri)
        with tempfile.TemporaryDirectory() as tmp:
            if local is not None:
                found = local / name if (local / name).is_file() else None
            else:
                try:
                    found = Path(client.download_artifacts(run.run_id, name, tmp))
                except Exception:  # noqa: BLE001 - MLflow raises its own errors for a missing artifact
                    found = None
            if found is not None:
                shutil.copyfile(found, dest)
                return run
    return None

