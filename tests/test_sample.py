"""`dlx sample`: text from a real `dlx train` character language model run, read back from its MLflow store.

Three runs are trained once (one process, dlx's own main): a char LM on a repeating text, the same without
checkpoints, and a digits classifier. The sample cases run dlx's main() in one more process, each with its
stdout and stderr, so torch and MLflow are imported twice in all."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import client_for, dlx_env, run_cli_batch, store_uri

TEXT = "abc" * 1500
LM = ["dataset=text", "dataset.path=abc.txt", "dataset.context=12", "model=transformer", "model.width=32",
      "model.depth=1", "model.heads=2", "optimizer.lr=0.01", "trainer.epochs=3", "trainer.progress=none"]

_SAMPLE = """
import contextlib, io, json, sys
from dlx.cli import main
out = []
for args in json.loads(sys.argv[1]):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(args)
    out.append([code, stdout.getvalue(), stderr.getvalue()])
print("RESULTS " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(store uri, {run name: run id}) of the three trained runs."""
    where = tmp_path_factory.mktemp("sample")
    (where / "abc.txt").write_text(TEXT, encoding="utf-8")
    uri = store_uri(where)
    tracking = [f"tracking.uri='{uri}'"]
    cases = {"lm": LM, "lm_nockpt": [*LM, "trainer.epochs=1", "trainer.checkpoint.enabled=false"],
             "digits": ["trainer.epochs=1", "model.width=16", "trainer.progress=none"]}
    results = run_cli_batch([["train", *args, *tracking, f"tracking.run_name={name}"] for name, args in cases.items()],
                            where, files=[where / "abc.txt"])
    assert all(code == 0 for code, _, _ in results.values()), results
    client = client_for(where)
    found = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return uri, {r.info.run_name: r.info.run_id for r in found}


def sample(cases: list[list[str]], uri: str) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each `dlx sample ARGS --uri URI`, run by dlx's main() in one process."""
    argv = [["sample", *c, "--uri", uri] for c in cases]
    proc = subprocess.run([sys.executable, "-c", _SAMPLE, json.dumps(argv)], env=dlx_env(), capture_output=True,
                          text=True, timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-3000:]
    return [tuple(r) for r in json.loads(line.removeprefix("RESULTS "))]


def test_sample_continues_the_text_and_repeats_with_its_seed(runs):
    uri, ids = runs
    lm = ids["lm"]
    greedy, hot7, hot7_again, hot8, unknown = sample([
        [lm, "--prompt", "abcab", "--temperature", "0", "--length", "40"],
        [lm, "--prompt", "ca", "--temperature", "5", "--length", "60", "--seed", "7"],
        [lm, "--prompt", "ca", "--temperature", "5", "--length", "60", "--seed", "7"],
        [lm, "--prompt", "ca", "--temperature", "5", "--length", "60", "--seed", "8"],
        [lm, "--prompt", "abxz", "--temperature", "0", "--length", "5"],
    ], uri)
    code, out, err = greedy
    assert code == 0 and err == "", err
    assert out == ("abc" * 20)[:45] + "\n"  # the prompt, then 40 characters that keep the pattern
    assert hot7[0] == 0 and hot7 == hot7_again  # the same seed, the same text
    text = hot7[1].rstrip("\n")
    assert len(text) == 62 and text.startswith("ca") and set(text) <= set("abc")
    assert hot8[1] != hot7[1]  # at temperature 5 the seed shows
    code, out, err = unknown
    assert code == 0 and out.startswith("abxz") and len(out.rstrip("\n")) == 9
    warning = err.strip().splitlines()
    assert len(warning) == 1 and "'x', 'z'" in warning[0] and "read as id 0" in warning[0]


def test_sample_refuses_in_one_line_what_it_cannot_sample(runs):
    uri, ids = runs
    cases = {
        "no such run": ["0123456789abcdef0123456789abcdef"],
        "is not a character language model": [ids["digits"]],
        "has no checkpoint to sample from": [ids["lm_nockpt"]],
        "--temperature=-1.0: allowed a finite number >= 0": [ids["lm"], "--temperature", "-1"],
        "--temperature=inf: allowed a finite number >= 0": [ids["lm"], "--temperature", "inf"],
    }
    for (says, args), (code, out, err) in zip(cases.items(), sample(list(cases.values()), uri)):
        lines = err.strip().splitlines()
        assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("dlx: error: "), (args, err)
        assert says in lines[0], (args, err)
