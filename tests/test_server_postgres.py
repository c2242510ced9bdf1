"""`dlx server` on a PostgreSQL database: a throwaway cluster (initdb, pg_ctl) in a temporary folder on
127.0.0.1, and a sweep of 8 trials at once logging to the server; every trial complete, no point lost. Skips
with the reason where PostgreSQL or its driver is missing (.ci/run installs both where it can)."""

from __future__ import annotations

from conftest import QUICK, run_dlx
from mlflow_servers import Server, assert_complete, free_port, postgres  # noqa: F401 - a fixture

from dlx import spool

EPOCHS = 3


def test_a_wrong_database_is_one_line_and_exit_2(postgres, tmp_path):  # noqa: F811
    wrong = postgres.uri.rsplit("/", 1)[0] + "/no_such_db"
    done = run_dlx(["server", "--port", str(free_port()), "--backend-store-uri", wrong], tmp_path, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("dlx: error: --backend-store-uri"), \
        done.stderr[-2000:]
    assert "no_such_db" in lines[0]


def test_a_sweep_of_8_parallel_trials_on_a_postgresql_server_loses_no_point(postgres, tmp_path):  # noqa: F811
    srv = Server(tmp_path, free_port(), "--backend-store-uri", postgres.uri)
    try:
        seeds = ",".join(str(s) for s in range(8))
        sweep = run_dlx(["sweep", *QUICK, f"trainer.epochs={EPOCHS}", f"seed={seeds}", "hydra/launcher=dlx_local",
                         "hydra.launcher.n_jobs=8", "tracking=server", f"tracking.uri={srv.uri}"], tmp_path,
                        timeout=900)
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        from mlflow import MlflowClient

        c = MlflowClient(tracking_uri=srv.uri)
        runs = c.search_runs([c.get_experiment_by_name("dlx").experiment_id])
        (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert parent.info.status == "FINISHED" and len(children) == 8 and len(runs) == 9
        for child in children:
            assert_complete(c, child, EPOCHS)
        assert not list(tmp_path.rglob(f"*{spool.SUFFIX}"))
    finally:
        srv.stop()
