"""The attention study (seq2seq on reverse at increasing lengths, without and with attention): its preset, the
finding `dlx report` states for it (effect present and absent, on runs with known values), and a tiny real run
through `dlx study` and `dlx report` that copies an attention map into the report."""

from __future__ import annotations

import json

from conftest import REPO, client_for, run_dlx, store_uri
from omegaconf import OmegaConf

import dlx.report.findings_attention  # noqa: F401 - registers the study's check and figures
from dlx.compose import compose
from dlx.report.collect import RunRecord
from dlx.report.stats import get_finding, mean_ci
from dlx.report.table import build_rows

BY = ["model.attention", "dataset.length"]
METRICS = ["test/seq_acc", "test/token_acc"]


def test_preset_composes_and_sweeps_keys_of_the_config():
    preset = OmegaConf.load(REPO / "conf" / "study" / "attention.yaml")
    cfg = compose(["+study=attention"])
    assert cfg.study.name == "attention" and cfg.study.statement and cfg.study.expected
    assert cfg.dataset._target_ == "dlx.data.reverse" and cfg.model._target_ == "dlx.models.seq2seq.Seq2Seq"
    swept = dict(preset.hydra.sweeper.params)
    assert len(str(swept["seed"]).split(",")) >= 3  # at least three seeds
    assert "none" in str(swept["model.attention"]) and len(str(swept["dataset.length"]).split(",")) >= 3
    for key in [*cfg.study.factor.split(","), *swept]:
        assert OmegaConf.select(cfg, key, default="__absent__") != "__absent__", key
    assert get_finding("attention").__module__ == "dlx.report.findings_attention"


# ---------------------------------------------------------------------------------------------- finding
def record(i: int, params: dict, metrics: dict) -> RunRecord:
    return RunRecord(f"{i:032x}", f"r{i}", "FINISHED", {k: str(v) for k, v in params.items()},
                     {"dlx.outcome": "ok"}, dict(metrics))


def rows(seq: dict[tuple[str, int], list[float]]):
    """Runs of each (attention, length) cell, one per seed, with the given test/seq_acc (token acc above it)."""
    runs, i = [], 0
    for (kind, length), accs in seq.items():
        for seed, acc in enumerate(accs):
            i += 1
            runs.append(record(i, {BY[0]: kind, BY[1]: length, "seed": seed},
                               {"test/seq_acc": acc, "test/token_acc": (1 + acc) / 2}))
    return build_rows(runs, BY, METRICS)


PILOT = {  # shaped like the study's own runs: none collapses with length, additive holds
    ("none", 5): [1.0, 1.0, 0.998], ("none", 10): [0.51, 0.47, 0.55], ("none", 20): [0.001, 0.0, 0.002],
    ("additive", 5): [1.0, 1.0, 1.0], ("additive", 10): [0.98, 0.97, 0.99], ("additive", 20): [0.78, 0.74, 0.83],
}


def finding(seq) -> str:
    return get_finding("attention")(rows(seq), "test/seq_acc", "max")


def test_finding_states_accuracy_by_length_and_welch_at_the_longest():
    text = finding(PILOT)
    assert "test/seq_acc by length 5/10/20: none 0.9993/0.5100/0.0010, additive 1.0000/0.9800/0.7833" in text
    assert "test/token_acc by length 5/10/20: none 0.9997/0.7550/0.5005" in text
    add, none = mean_ci(PILOT["additive", 20]), mean_ci(PILOT["none", 20])
    assert f"at length 20 additive 0.7833 ± {add.half_width:.4f} vs none 0.0010 ± {none.half_width:.4f} (Welch" in text
    assert "without attention test/seq_acc 0.9993" in text and "at length 5 -> 0.0010" in text
    assert "APPEARED" in text and "NOT" not in text


def test_finding_says_did_not_when_attention_falls_as_much_or_none_holds():
    falls_too = {**PILOT, ("additive", 20): [0.05, 0.02, 0.04]}  # above none, yet lost most of its accuracy
    assert "did NOT appear" in finding(falls_too)
    none_holds = {**PILOT, ("none", 20): [0.97, 0.99, 0.98], ("additive", 20): [0.99, 0.98, 1.0]}
    assert "did NOT appear" in finding(none_holds)
    one_seed = {k: v[:1] for k, v in PILOT.items()}  # no test with one seed a side: nothing is significant
    assert "did NOT appear" in finding(one_seed)


def test_finding_counts_a_saturated_difference():
    # every seed perfect at 5 and every seed wrong at 20: Welch's test is undefined, the fall is not in doubt
    text = finding({**PILOT, ("none", 5): [1.0, 1.0, 1.0], ("none", 20): [0.0, 0.0, 0.0]})
    assert "every seed 1.0000 against every seed 0.0000" in text and "APPEARED" in text


def test_finding_names_what_it_needs():
    text = finding({k: v for k, v in PILOT.items() if k[0] == "additive"})
    assert text.startswith("finding: the attention study needs model.attention=none")


# ---------------------------------------------------------------------------------------------- for real
def test_study_report_copies_an_attention_map(workdir, capsys):
    from dlx.report.cli import report_main

    proc = run_dlx(["study", "attention", "dataset.length=4,6", "seed=0", "trainer.epochs=1", "dataset.n_train=100",
                    "model.hidden=16", "model.embedding=8", "hydra.launcher.n_jobs=1"], workdir, check=True)
    parent = proc.stdout.split("dlx report ")[1].split(")")[0].strip()
    capsys.readouterr()
    assert report_main([parent, "--format", "json", "--uri", store_uri(workdir), "--out", str(workdir / "rep")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"accuracy_by_length.png", "attention_map.png"} <= set(data["images"])
    assert (workdir / "rep" / "attention_map.png").stat().st_size > 1000
    assert any(n.startswith("attention_map.png: where each output step") for n in data["notes"])
    finding = next(n for n in data["notes"] if n.startswith("finding"))
    assert "test/seq_acc by length 4/6: none" in finding and "expected effect" in finding
    artifacts = {a.path for a in client_for(workdir).list_artifacts(parent, "report")}
    assert "report/attention_map.png" in artifacts
