"""diagnostics=sequence through `dlx train`, into a real MLflow store: the gradient through time of a recurrent
model on the adding problem and on digits read row by row, and the attention maps of a seq2seq on reverse
(a model without a recurrent layer is skipped: tests/test_recurrent.py)."""

from __future__ import annotations

import json

import pytest
from conftest import all_runs, client_for, run_cli_batch

TINY = ["trainer.epochs=1", "trainer.progress=plain", "diagnostics=sequence", "model.hidden=16"]
CASES = {
    "adding": ["dataset=adding", "dataset.length=12", "dataset.n_train=200", "loss=mse", "model=rnn"],
    "digits": ["dataset=digits", "dataset.train_subset=200", "model=lstm", "model.read=rows"],
    "reverse": ["dataset=reverse", "dataset.length=6", "dataset.n_train=300", "model=seq2seq", "model.embedding=8",
                "diagnostics.sequence.maps=2"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    top = tmp_path_factory.mktemp("seq_diagnostics")
    args = {name: ["train", *extra, *TINY] for name, extra in CASES.items()}
    results = run_cli_batch(list(args.values()), top)
    out = {}
    for i, (name, a) in enumerate(args.items()):
        code, err, _ = results[json.dumps(a)]
        assert code == 0, f"{name}: {err[-3000:]}"
        (run,) = all_runs(top / f"case{i}")
        out[name] = (client_for(top / f"case{i}"), run)
    return out


def _artifacts(client, run, path):
    return {a.path for a in client.list_artifacts(run.info.run_id, path)}


@pytest.mark.parametrize(("case", "steps"), [("adding", 12), ("digits", 8)])
def test_gradient_through_time_is_logged_per_step_and_drawn(runs, case, steps):
    client, run = runs[case]
    for when in ("init", "final"):
        history = client.get_metric_history(run.info.run_id, f"bptt/grad_norm_{when}")
        assert sorted(m.step for m in history) == list(range(steps))
        values = {m.step: m.value for m in history}
        assert values[steps - 1] > 0
        ratio = run.data.metrics[f"bptt/first_last_{when}"]
        assert ratio == pytest.approx(values[0] / values[steps - 1], rel=1e-6)
    assert "plots/grad_through_time.png" in _artifacts(client, run, "plots")


def test_seq2seq_logs_its_attention_maps_and_its_encoders_gradient(runs):
    client, run = runs["reverse"]
    assert "attention/attention.png" in _artifacts(client, run, "attention")
    history = client.get_metric_history(run.info.run_id, "bptt/grad_norm_init")
    assert sorted(m.step for m in history) == list(range(6))  # the encoder: the decoder runs once per output step
