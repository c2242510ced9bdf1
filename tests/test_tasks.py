"""Targets other than class labels (dlx.tasks): real values and a class per position go through the same data
preparation, loop, losses and metrics as labels, with a user's own data set and model plugged in by `_target_`."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import client_for, run_cli_batch

from dlx.data import Source, prepare
from dlx.losses import CrossEntropy, SquaredError
from dlx.tasks import IGNORE, Target, Task

TOY = textwrap.dedent('''
    import numpy as np
    from torch import nn
    from dlx.data import Source
    from dlx.tasks import IGNORE, Target

    def sums(n: int = 600):
        """y = the sum of six numbers in U(0, 1): predicting the mean scores an MSE of 0.5."""
        rng = np.random.default_rng(0)
        x = rng.random((n, 1, 6)).astype("float32")
        return Source(train=(x, x.sum(axis=(1, 2))), num_classes=1, target=Target.value, tolerance=0.1, name="sums")

    def echo(n: int = 600, vocab: int = 6):
        """Each position's target is its own token; the last position is padding."""
        rng = np.random.default_rng(0)
        x = rng.integers(1, vocab, (n, 5))
        y = x.copy()
        y[:, -1] = IGNORE
        return Source(train=(x, y), num_classes=vocab, target="steps", vocab=vocab, tokens=tuple("_abcde"),
                      name="echo")

    class PerStep(nn.Module):
        """A logit per position; its forward takes `target`, which dlx must pass in training steps only."""

        def __init__(self, *, input_shape, num_classes, vocab, target, target_len, width: int = 16):
            super().__init__()
            assert target == "steps" and target_len == input_shape[0] == 5, (target, target_len, input_shape)
            self.emb, self.out = nn.Embedding(vocab, width), nn.Linear(width, num_classes)

        def forward(self, x, target=None):
            assert (target is not None) == self.training, "targets in evaluation, or none in training"
            return self.out(self.emb(x))

    class ShortTeacher(PerStep):
        """Right in evaluation, one position short when given the targets."""

        def forward(self, x, target=None):
            out = self.out(self.emb(x))
            return out if target is None else out[:, 1:]
''')

RUN = ["trainer.epochs=15", "trainer.progress=plain", "trainer.batch_size=32", "optimizer.lr=0.01"]
CASES = {
    "value": ["dataset._target_=toyseq.sums", "loss=mse", *RUN],
    "value_ce": ["dataset._target_=toyseq.sums", *RUN],
    "steps": ["dataset._target_=toyseq.echo", "model._target_=toyseq.PerStep", *RUN],
    "steps_mlp": ["dataset._target_=toyseq.echo", *RUN],
    "short_teacher": ["dataset._target_=toyseq.echo", "model._target_=toyseq.ShortTeacher", *RUN],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    top = tmp_path_factory.mktemp("tasks")
    (top / "toyseq.py").write_text(TOY)
    out = run_cli_batch([["train", *args] for args in CASES.values()], top, [top / "toyseq.py"])
    return {name: (top / f"case{i}", out[json.dumps(["train", *args])]) for i, (name, args) in enumerate(CASES.items())}


def _run(folder: Path):
    client = client_for(folder)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return client, run


def test_a_value_target_trains_with_mse_and_reports_mse_and_solved(results):
    folder, (code, err, _) = results["value"]
    assert code == 0, err
    _, run = _run(folder)
    m = run.data.metrics
    assert m["test/mse"] < 0.1, m  # the mean's MSE is 0.5
    assert m["test/acc"] == m["test/solved"] and 0 < m["test/solved"] <= 1
    assert run.info.status == "FINISHED" and "val/mse" in m


def test_a_classification_loss_on_value_targets_is_one_line_before_any_run(results):
    folder, (code, err, _) = results["value_ce"]
    assert code == 2 and "loss._target_=dlx.losses.CrossEntropy: takes class labels" in err and "mse" in err, err
    assert "Traceback" not in err and not (folder / "outputs" / "mlflow.db").exists() or not _runs(folder)


def _runs(folder: Path):
    client = client_for(folder)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_a_per_position_target_with_a_teacher_forced_user_model(results):
    folder, (code, err, _) = results["steps"]
    assert code == 0, err  # the model asserts it gets targets in training steps only
    client, run = _run(folder)
    m = run.data.metrics
    assert m["test/token_acc"] == m["test/acc"] > 0.95, m
    assert 0 < m["test/seq_acc"] <= 1
    assert m["test/perplexity"] == pytest.approx(math.exp(m["test/loss"]), rel=1e-6)
    assert m["test/bpc"] == pytest.approx(m["test/loss"] / math.log(2), rel=1e-6)
    record = json.loads(Path(client.download_artifacts(run.info.run_id, "data.json", str(folder))).read_text())
    assert record == {"name": "echo", "input_shape": [5], "num_classes": 6, "target": "steps", "vocab": 6,
                      "target_len": 5, "tokens": list("_abcde")}


def test_a_model_for_real_valued_inputs_is_refused_on_token_data(results):
    folder, (code, err, _) = results["steps_mlp"]
    assert code == 2 and "cannot serve dataset echo, which has token ids for inputs and steps targets" in err, err
    assert "Traceback" not in err and not _runs(folder)


@pytest.mark.parametrize("overrides,message", [
    (["dataset=adding"], "loss._target_=dlx.losses.CrossEntropy: takes class labels, and dataset adding has "
                         "real-valued targets: allowed loss=mse, mae or huber"),
    (["dataset=copy", "model=cnn"], "model._target_=dlx.models.CNN: cannot serve dataset copy, which has token ids "
                                    "for inputs and sequence targets (one per position): allowed model="),
    (["dataset=copy", "model=lstm"], "model._target_=dlx.models.recurrent.LSTM: cannot serve dataset copy, which has "
                                     "sequence targets: allowed model=seq2seq, model=transformer"),
    (["dataset=adding", "loss=mse", "model=seq2seq"], "model._target_=dlx.models.seq2seq.Seq2Seq: cannot serve "
                                                      "dataset adding, which has value targets: allowed model=cnn"),
    (["dataset=copy", "model=seq2seq", "regularization=input_noise"], "regularization.input_noise=0.1 adds Gaussian "
                                                                      "noise to real-valued inputs, and dataset copy"),
    (["augmentation=eda"], "EDA edits token sequences, and dataset=digits gives real-valued inputs"),
    (["dataset=text_classification", "dataset.path=t.csv"], "model._target_=dlx.models.MLP: cannot serve dataset "
                                                            "text_classification, which has token ids for inputs"),
])
def test_a_built_in_data_set_declares_its_kind_and_a_mismatch_is_refused_while_composing(overrides, message):
    from dlx.compose import compose
    from dlx.config import ConfigError

    with pytest.raises(ConfigError) as info:  # composing loads no data: the dataset's declaration decides
        compose(overrides)
    assert message in str(info.value)


def test_a_teacher_forced_training_call_is_checked_on_a_sample_before_any_run(results):
    folder, (code, err, _) = results["short_teacher"]
    assert code == 2 and "returned (2, 4, 6) (a training forward with targets)" in err and "(2, 5, 6)" in err, err
    assert "Traceback" not in err and not _runs(folder)


# ------------------------------------------------------------------------------------ the parts, directly
def test_prepare_keeps_token_ids_and_real_targets_and_carves_at_random():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 7, (200, 4))
    y = rng.random(200)
    splits = prepare(Source(train=(x, y), num_classes=1, target="value", tolerance=0.5, vocab=7))
    assert splits.x_train.dtype == torch.int64 and splits.y_train.dtype == torch.float32
    assert splits.task == Task(target=Target.value, vocab=7, tolerance=0.5)
    # no normalisation, no scaling: the ids come through as they were
    got = torch.cat([splits.x_train, splits.x_val, splits.x_test])
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, x.tolist()))
    assert (len(splits.test), len(splits.val)) == (40, 16)


@pytest.mark.parametrize("source,message", [
    (Source(train=(np.zeros((4, 3)), np.zeros(4)), num_classes=1, target="value"), "tolerance"),
    (Source(train=(np.zeros((4, 3), dtype=int), np.zeros((4, 2), dtype=int)), num_classes=2, target="steps",
            vocab=3), "one per input position"),
    (Source(train=(np.full((4, 3), 5), np.zeros((4, 3), dtype=int)), num_classes=2, target="steps", vocab=3),
     "token inputs must be integer ids in [0, 3)"),
    (Source(train=(np.zeros((4, 3), dtype=int), np.full((4, 3), 7)), num_classes=2, target="sequence", vocab=3),
     "outside the 2 classes"),
    (Source(train=(np.zeros((4, 3)), np.zeros(4)), num_classes=1, target="regression"), "allowed label, value"),
    (Source(train=(np.zeros((4, 3)), np.zeros(4)), num_classes=1, target="value", tolerance="0.1"), "tolerance"),
    (Source(train=(np.zeros((6, 8), dtype=int), np.zeros((6, 6), dtype=int)), num_classes=2, target="sequence",
            vocab=3, test=(np.zeros((2, 12), dtype=int), np.zeros((2, 9), dtype=int))),
     "'dataset' test: samples (12,) and targets (9,) do not match the training split's (8,) and (6,)"),
])
def test_bad_sources_are_one_line(source, message):
    from dlx.data import DatasetError

    with pytest.raises(DatasetError, match=message.replace("[", r"\[").replace(")", r"\)").replace("(", r"\(")):
        prepare(source)


def test_sequence_metrics_skip_ignored_positions():
    task = Task(target=Target.sequence, target_len=3)
    logits = torch.tensor([[[5.0, 0], [0, 5], [5, 0]], [[5, 0], [5, 0], [0, 5]]])
    y = torch.tensor([[0, 1, IGNORE], [0, 1, 1]])  # sample 0 right where it counts; sample 1 wrong at t=1
    hits, counted = task.hits(logits, y)
    assert (int(hits), int(counted)) == (4, 5)
    assert int(task.sums(logits, y)["seq_right"]) == 1
    loss = CrossEntropy()(logits, y)
    rows, labels = logits.reshape(-1, 2)[[0, 1, 3, 4, 5]], y.reshape(-1)[[0, 1, 3, 4, 5]]
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(rows, labels))
    # the other losses weigh the same positions, with a mask rather than a host-synchronising selection
    from dlx.losses import Hinge

    onehot = torch.nn.functional.one_hot(labels, 2).float()
    torch.testing.assert_close(SquaredError()(logits, y), torch.nn.functional.mse_loss(rows, onehot))
    torch.testing.assert_close(Hinge()(logits, y), torch.nn.functional.multi_margin_loss(rows, labels))


def test_value_metrics_and_mse_compare_outputs_with_the_values():
    task = Task(target=Target.value, tolerance=0.1)
    out, y = torch.tensor([[1.0], [2.05], [0.0]]), torch.tensor([1.0, 2.0, 1.0])
    assert int(task.hits(out, y)[0]) == 2
    assert float(task.sums(out, y)["mse"]) == pytest.approx(1 + 0.0025)
    torch.testing.assert_close(SquaredError()(out, y), torch.tensor((1 + 0.0025) / 3))
    metrics = task.metrics(0.3, 2 / 3, {"mse": 1.0025}, 3)
    assert metrics["solved"] == metrics["acc"] == 2 / 3 and metrics["mse"] == pytest.approx(1.0025 / 3)
