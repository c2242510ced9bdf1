import copy
import functools
import io
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch.optim import lr_scheduler as tls

from dlx import schedule
from dlx.engine import metric_mode
from dlx.schedule import LRSchedule

SPE = 7  # steps per epoch: odd, so epoch boundaries and per-step phases don't line up by accident
TWO_GROUPS = (0.1, 0.02)

# Knobs that make every schedule change within a few short epochs.
SHORT_KNOBS = {
    "constant": {},
    "cosine": {"min_lr_ratio": 0.05},
    "cosine_restarts": {"t0_epochs": 1, "t_mult": 2},
    "exponential": {"gamma": 0.7},
    "multistep": {"milestones": [1, 3]},
    "onecycle": {},
    "plateau": {"patience": 0, "factor": 0.5},
    "step": {"step_size": 2, "gamma": 0.5},
}
# dlx's schedules, as conf/scheduler/ names them
CONF = Path(__file__).resolve().parents[1] / "conf" / "scheduler"
YAMLS = sorted(CONF.glob("*.yaml"))
NAMES = sorted(yaml.safe_load(p.read_text())["_target_"].rpartition(".")[2] for p in YAMLS)
LOSSES = [1.0, 0.9, 0.95, 0.8, 0.8, 0.85, 0.7, 0.75, 0.75, 0.6, 0.6, 0.6]


def make_opt(lrs=TWO_GROUPS) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def lrs_of(opt) -> list[float]:
    return [g["lr"] for g in opt.param_groups]


def drive(sched: LRSchedule, opt, start: int, stop: int, metrics=None) -> list[list[float]]:
    """Play the training loop from step `start` to `stop`: step_batch before each step, step_epoch after an epoch."""
    curve = []
    for step in range(start, stop):
        sched.step_batch(step)
        curve.append(lrs_of(opt))
        opt.step()  # no grads: a no-op, in the engine's order (torch's schedulers check it)
        if (step + 1) % SPE == 0:
            epoch = step // SPE
            sched.step_epoch(epoch, metrics[epoch] if metrics else None)
    return curve


WARMUP_KEYS = ("warmup_epochs", "warmup_start_factor")


def create_scheduler(name, opt, *, steps_per_epoch, epochs, **kwargs):
    """dlx's schedule `name` with its options, as build makes it from a partial of the schedule function."""
    options = {k: v for k, v in kwargs.items() if k not in WARMUP_KEYS}
    warmup = {k: v for k, v in kwargs.items() if k in WARMUP_KEYS}
    return schedule.create_scheduler(functools.partial(getattr(schedule, name), **options), opt,
                                     steps_per_epoch=steps_per_epoch, epochs=epochs, mode_for=metric_mode, **warmup)


def ours(name, epochs, lrs=TWO_GROUPS, metrics=None, **kwargs) -> list[list[float]]:
    opt = make_opt(lrs)
    sched = create_scheduler(name, opt, steps_per_epoch=SPE, epochs=epochs, **kwargs)
    return drive(sched, opt, 0, SPE * epochs, metrics)


def reference(make, epochs, lrs=TWO_GROUPS, per_batch=False, metrics=None) -> list[list[float]]:
    """The lr curve torch's own scheduler gives, read before each optimizer step."""
    opt = make_opt(lrs)
    sched = make(opt)
    curve = []
    for epoch in range(epochs):
        for _ in range(SPE):
            curve.append(lrs_of(opt))
            opt.step()  # no grads: a no-op that keeps torch's "step order" check quiet
            if per_batch:
                sched.step()
        if metrics is not None:
            sched.step(metrics[epoch])
        elif not per_batch:
            sched.step()
    return curve


def assert_same_curve(got, want):
    assert len(got) == len(want)
    flat_got, flat_want = [x for row in got for x in row], [x for row in want for x in row]
    assert flat_got == pytest.approx(flat_want, abs=1e-9, rel=0)
    # A flat curve would make the comparison vacuous.
    assert len({round(x, 12) for x in flat_want}) > 2


def per_group(lrs, ratio):
    return [lr * ratio for lr in lrs]


CASES = {
    "step": (dict(step_size=2, gamma=0.5), 6, TWO_GROUPS, False, lambda o: tls.StepLR(o, step_size=2, gamma=0.5)),
    "multistep": (dict(milestones=[1, 3, 3, 4], gamma=0.3), 6, TWO_GROUPS, False,
                  lambda o: tls.MultiStepLR(o, milestones=[1, 3, 3, 4], gamma=0.3)),
    "exponential": (dict(gamma=0.8), 5, TWO_GROUPS, False, lambda o: tls.ExponentialLR(o, gamma=0.8)),
    "cosine": (dict(), 5, TWO_GROUPS, True, lambda o: tls.CosineAnnealingLR(o, T_max=5 * SPE)),
    "cosine-min": (dict(min_lr_ratio=0.1), 5, (0.3,), True,
                   lambda o: tls.CosineAnnealingLR(o, T_max=5 * SPE, eta_min=0.03)),
    "cosine_restarts": (dict(t0_epochs=1, t_mult=2, min_lr_ratio=0.1), 8, (0.3,), True,
                        lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=SPE, T_mult=2, eta_min=0.03)),
    "cosine_restarts-t1": (dict(t0_epochs=2, t_mult=1), 7, TWO_GROUPS, True,
                           lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=2 * SPE, T_mult=1)),
    "onecycle": (dict(), 5, TWO_GROUPS, True,
                 lambda o: tls.OneCycleLR(o, max_lr=list(TWO_GROUPS), total_steps=5 * SPE, cycle_momentum=False)),
    "onecycle-linear": (dict(pct_start=0.25, div_factor=10.0, final_div_factor=100.0, anneal="linear"), 4,
                        TWO_GROUPS, True,
                        lambda o: tls.OneCycleLR(o, max_lr=list(TWO_GROUPS), total_steps=4 * SPE, pct_start=0.25,
                                                 div_factor=10.0, final_div_factor=100.0, anneal_strategy="linear",
                                                 cycle_momentum=False)),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_torch_scheduler(case):
    knobs, epochs, lrs, per_batch, make = CASES[case]
    name = case.split("-")[0]
    assert_same_curve(ours(name, epochs, lrs, **knobs), reference(make, epochs, lrs, per_batch))


# With threshold 1e-2, 1.985 and 1.984 after 2.0 (2.015, 2.016 in max mode) are no improvement relative to the
# best, so the lr drops after them; under an absolute threshold it would not.
@pytest.mark.parametrize("mode, metrics", [
    ("min", [2.0, 1.985, 1.984, 1.9, 1.95, 1.5, 1.5, 1.51, 1.52, 1.53, 1.54, 1.55, 1.56, 1.0, 1.0]),
    ("max", [2.0, 2.015, 2.016, 2.1, 2.05, 2.5, 2.5, 2.49, 2.48, 2.47, 2.46, 2.45, 2.44, 3.0, 3.0]),
])
def test_plateau_matches_reduce_lr_on_plateau(mode, metrics):
    knobs = dict(mode=mode, factor=0.3, patience=1, threshold=1e-2, min_lr_ratio=0.02)
    got = ours("plateau", len(metrics), metrics=metrics, **knobs)
    want = reference(
        lambda o: tls.ReduceLROnPlateau(o, mode=mode, factor=0.3, patience=1, threshold=1e-2,
                                        min_lr=per_group(TWO_GROUPS, 0.02)),
        len(metrics), metrics=metrics,
    )
    assert_same_curve(got, want)
    assert got[-1] == pytest.approx(per_group(TWO_GROUPS, 0.02))  # the floor was reached


def test_warmup_is_linear_per_batch_then_hands_over_to_cosine():
    spe, epochs, base = 4, 5, 0.3
    opt = make_opt((base,))
    sched = create_scheduler("cosine", opt, steps_per_epoch=spe, epochs=epochs, warmup_epochs=1.5,
                             warmup_start_factor=0.1)
    got = []
    for step in range(spe * epochs):
        sched.step_batch(step)
        got.append(sched.lr)
    warmup = 6  # round(1.5 * 4)
    assert got[0] == pytest.approx(0.1 * base)
    steps = [b - a for a, b in zip(got[: warmup + 1], got[1 : warmup + 1])]
    assert steps == pytest.approx([0.9 * base / warmup] * warmup)
    assert got[warmup] == pytest.approx(base)

    ref_opt = make_opt((base,))
    ref = tls.SequentialLR(ref_opt, [tls.LinearLR(ref_opt, start_factor=0.1, total_iters=warmup),
                                     tls.CosineAnnealingLR(ref_opt, T_max=spe * epochs - warmup)],
                           milestones=[warmup])
    want = []
    for _ in range(spe * epochs):
        want.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert got == pytest.approx(want, abs=1e-9, rel=0)


@pytest.mark.parametrize("name", ["step", "exponential", "constant"])
def test_warmup_multiplies_epoch_schedules(name):
    knobs = {"step": dict(step_size=1, gamma=0.5), "exponential": dict(gamma=0.5), "constant": {}}[name]
    got = [row[0] for row in ours(name, 4, (0.2,), warmup_epochs=2, **knobs)]
    warmup = 2 * SPE
    for step, lr in enumerate(got):
        warm = min(step / warmup, 1.0)  # warmup_start_factor defaults to 0
        epoch_factor = 1.0 if name == "constant" else 0.5 ** (step // SPE)
        assert lr == pytest.approx(0.2 * warm * epoch_factor, abs=1e-12)
    assert got[0] == 0.0


@pytest.mark.parametrize("name", ["constant", "exponential", "multistep", "plateau", "step"])
def test_epoch_granular_schedules_are_constant_within_an_epoch(name):
    curve = [row[0] for row in ours(name, 6, metrics=LOSSES, **SHORT_KNOBS.get(name, {}))]
    epochs = [curve[i : i + SPE] for i in range(0, len(curve), SPE)]
    assert all(len(set(e)) == 1 for e in epochs)
    if name != "constant":
        assert len({e[0] for e in epochs}) > 1


@pytest.mark.parametrize("split", [17, 21])  # mid-epoch and at an epoch boundary
@pytest.mark.parametrize("optimizer_first", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_resume_continues_identically(name, split, optimizer_first):
    kwargs = dict(steps_per_epoch=SPE, epochs=6, warmup_epochs=0 if name == "onecycle" else 1.5,
                  **SHORT_KNOBS.get(name, {}))
    total = 6 * SPE
    opt = make_opt()
    sched = create_scheduler(name, opt, **kwargs)
    full = drive(sched, opt, 0, total, LOSSES)
    assert all(math.isfinite(x) and x >= 0 for row in full for x in row)

    opt = make_opt()
    sched = create_scheduler(name, opt, **kwargs)
    head = drive(sched, opt, 0, split, LOSSES)
    buf = io.BytesIO()
    torch.save({"sched": sched.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # plain containers load without pickle

    opt = make_opt()
    if optimizer_first:
        opt.load_state_dict(ckpt["opt"])  # lr is the mid-run value now; the base survives as initial_lr
        sched = create_scheduler(name, opt, **kwargs)
    else:
        sched = create_scheduler(name, opt, **kwargs)
        opt.load_state_dict(ckpt["opt"])
    sched.load_state_dict(ckpt["sched"])
    tail = drive(sched, opt, split, total, LOSSES)
    assert head + tail == full


def is_plain(x) -> bool:
    if isinstance(x, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in x.items())
    if isinstance(x, list | tuple):
        return all(is_plain(v) for v in x)
    return x is None or isinstance(x, bool | int | float | str)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_is_plain_and_fresh_schedule_starts_at_step_zero(name):
    opt = make_opt()
    sched = create_scheduler(name, opt, steps_per_epoch=SPE, epochs=3, **SHORT_KNOBS.get(name, {}))
    state = copy.deepcopy(sched.state_dict())
    assert is_plain(state)
    # Set at creation, as torch does, so the first logged lr is already the schedule's.
    first = sched.lr
    sched.step_batch(0)
    assert sched.lr == first
    assert sched.monitor == ("val/loss" if name == "plateau" else None)


def test_plateau_reduction_shows_at_once_as_the_next_step_will_have_it():
    opt = make_opt((0.1,))
    sched = create_scheduler("plateau", opt, steps_per_epoch=SPE, epochs=4, patience=0, factor=0.5,
                             warmup_epochs=3)
    drive(sched, opt, 0, 2 * SPE - 1, [1.0])  # the first metric sets the best
    sched.step_batch(2 * SPE - 1)
    sched.step_epoch(1, 2.0)  # worse, patience 0: halve
    shown = sched.lr
    assert shown == pytest.approx(0.05 * (2 * SPE) / (3 * SPE))  # still warming up
    sched.step_batch(2 * SPE)
    assert sched.lr == shown


def test_base_lrs_come_from_initial_lr_of_a_restored_optimizer():
    opt = make_opt()
    sched = create_scheduler("exponential", opt, steps_per_epoch=SPE, epochs=4, gamma=0.5)
    sched.step_batch(3 * SPE)
    restored = make_opt((1.0, 1.0))
    restored.load_state_dict(opt.state_dict())  # lr holds the decayed value, initial_lr the base
    sched = create_scheduler("exponential", restored, steps_per_epoch=SPE, epochs=4, gamma=0.5)
    assert sched.base_lrs == list(TWO_GROUPS)
    sched.step_batch(3 * SPE)
    assert lrs_of(restored) == pytest.approx([lr / 8 for lr in TWO_GROUPS])


def test_load_state_dict_writes_the_base_back_to_the_optimizer():
    state = create_scheduler("cosine", make_opt(), steps_per_epoch=SPE, epochs=2).state_dict()
    opt = make_opt((1.0, 1.0))  # e.g. a resumed run whose config lr was edited
    sched = create_scheduler("cosine", opt, steps_per_epoch=SPE, epochs=2)
    sched.load_state_dict(state)
    assert [g["initial_lr"] for g in opt.param_groups] == list(TWO_GROUPS) == sched.base_lrs
    sched.step_batch(0)
    assert lrs_of(opt) == list(TWO_GROUPS)


def test_plateau_monitor_and_metric_required():
    sched = create_scheduler("plateau", make_opt(), steps_per_epoch=SPE, epochs=2, monitor="val/acc", mode="max")
    assert sched.monitor == "val/acc"
    with pytest.raises(ValueError, match="'val/acc'"):
        sched.step_epoch(0)
    # Other schedules ignore step_epoch.
    sched = create_scheduler("cosine", make_opt(), steps_per_epoch=SPE, epochs=2)
    sched.step_batch(3)
    before = sched.lr
    sched.step_epoch(0, 1.0)
    assert sched.lr == before


def test_errors_name_the_bad_key_and_say_what_is_allowed():
    cases = [
        ("step", dict(step_size=0), "scheduler.step_size=0 is out of range: allowed >= 1"),
        ("exponential", dict(gamma=1.5), "scheduler.gamma=1.5 is out of range: allowed in (0, 1]"),
        ("multistep", dict(milestones=[4, 2]), "scheduler.milestones=[4, 2] is out of range: allowed numbers >= 1 "
                                               "in increasing order"),
        ("onecycle", dict(anneal="cosine"), "scheduler.anneal='cosine' is not valid: allowed cos, linear"),
        ("plateau", dict(mode="best"), "scheduler.mode='best' is not valid: allowed auto, min, max"),
        ("cosine", dict(warmup_epochs=-1), "scheduler.warmup_epochs=-1 is out of range: allowed >= 0"),
        ("onecycle", dict(warmup_epochs=1),
         "scheduler.warmup_epochs must be 0 with scheduler=onecycle (pct_start is its warmup)"),
    ]
    for name, kwargs, message in cases:
        with pytest.raises(ValueError) as err:
            create_scheduler(name, make_opt(), steps_per_epoch=SPE, epochs=2, **kwargs)
        assert str(err.value) == message
    with pytest.raises(ValueError, match="t_mult"):
        create_scheduler("cosine_restarts", make_opt(), steps_per_epoch=SPE, epochs=2, t_mult=1.5)
    with pytest.raises(TypeError, match="milestones"):
        create_scheduler("step", make_opt(), steps_per_epoch=SPE, epochs=2, milestones=[1])
    sched = create_scheduler("step", make_opt(), steps_per_epoch=SPE, epochs=2)
    with pytest.raises(ValueError, match="scheduler 'cosine', this schedule is 'step'"):
        sched.load_state_dict(create_scheduler("cosine", make_opt(), steps_per_epoch=SPE, epochs=2).state_dict())


def test_steps_past_the_end_hold_the_final_lr():
    for name in ["cosine", "onecycle"]:
        opt = make_opt((0.1,))
        sched = create_scheduler(name, opt, steps_per_epoch=SPE, epochs=2)
        sched.step_batch(2 * SPE - 1)
        last = sched.lr
        for step in (2 * SPE, 2 * SPE + 3, 3 * SPE + 1):
            sched.step_batch(step)
            assert sched.lr <= last + 1e-15


# ------------------------------------------------------------------------------ options have one home: the signature
def instantiate_yaml(path: Path):
    """The scheduler node of one conf/scheduler/ file, made the way build makes it."""
    from hydra.utils import instantiate

    node = yaml.safe_load(path.read_text())
    node.pop("defaults")
    return instantiate(node, _partial_=True, _convert_="all")


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_every_yaml_option_builds_and_resumes(path):
    node = yaml.safe_load(path.read_text())
    assert node["defaults"] == [f"schema_{path.stem}"]
    target = node["_target_"]
    fn = getattr(schedule, target.removeprefix("dlx.schedule."))
    defaults = {name: opt.default for name, opt in schedule.spec(fn).items()}
    deltas = {k: v for k, v in node.items() if k not in ("defaults", "_target_")}
    assert all(k in defaults and defaults[k] != v for k, v in deltas.items()), "the YAML restates a default"

    def make(opt):
        return schedule.create_scheduler(instantiate_yaml(path), opt, steps_per_epoch=SPE, epochs=12,
                                         mode_for=metric_mode)

    opt = make_opt()
    full = drive(make(opt), opt, 0, 12 * SPE, LOSSES)
    assert all(math.isfinite(x) and x >= 0 for row in full for x in row)
    opt = make_opt()
    sched = make(opt)
    head = drive(sched, opt, 0, 40, LOSSES)
    state = round_trip({"sched": sched.state_dict(), "opt": opt.state_dict()})
    opt = make_opt()
    opt.load_state_dict(state["opt"])
    sched = make(opt)
    sched.load_state_dict(state["sched"])
    assert head + drive(sched, opt, 40, 12 * SPE, LOSSES) == full


def round_trip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # plain containers load without pickle


# The values conf/scheduler/*.yaml held, which runs used, are the signatures' defaults now; dlx.schedule's own table
# of defaults said step_size 30, gamma 0.95, milestones [30, 60], patience 10, t0_epochs 10.
FLAT = [1.0] * 12
DEFAULTS = {
    "step": (12, False, None, lambda o: tls.StepLR(o, step_size=10, gamma=0.1)),
    "exponential": (3, False, None, lambda o: tls.ExponentialLR(o, gamma=0.9)),
    "multistep": (16, False, None, lambda o: tls.MultiStepLR(o, milestones=[10, 15], gamma=0.1)),
    "cosine_restarts": (16, True, None, lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=5 * SPE, T_mult=2)),
    "plateau": (12, False, FLAT, lambda o: tls.ReduceLROnPlateau(o, mode="min", factor=0.1, patience=3)),
}


@pytest.mark.parametrize("name", DEFAULTS)
def test_defaults_are_the_values_runs_use(name):
    epochs, per_batch, metrics, make = DEFAULTS[name]
    assert_same_curve(ours(name, epochs, metrics=metrics), reference(make, epochs, per_batch=per_batch,
                                                                      metrics=metrics))


# ------------------------------------------------------------------------------ a user's torch scheduler
TORCH = {
    "StepLR": (dict(step_size=2, gamma=0.5), None, False, lambda o: tls.StepLR(o, step_size=2, gamma=0.5)),
    "ReduceLROnPlateau": (dict(factor=0.5, patience=1), LOSSES, False,
                          lambda o: tls.ReduceLROnPlateau(o, factor=0.5, patience=1)),
    "OneCycleLR": (dict(max_lr=[0.3, 0.1]), None, True,
                   lambda o: tls.OneCycleLR(o, max_lr=[0.3, 0.1], total_steps=12 * SPE)),
}


@pytest.mark.parametrize("name", TORCH)
def test_torch_scheduler_through_create_scheduler_resumes(name):
    from hydra.utils import instantiate

    options, metrics, per_batch, make_ref = TORCH[name]
    node = {"_target_": f"torch.optim.lr_scheduler.{name}", **options}

    def make(opt):
        factory = instantiate(node, _partial_=True, _convert_="all")
        return schedule.create_scheduler(factory, opt, steps_per_epoch=SPE, epochs=12)

    opt = make_opt()
    sched = make(opt)
    assert sched.monitor == ("val/loss" if name == "ReduceLROnPlateau" else None)
    full = drive(sched, opt, 0, 12 * SPE, metrics)
    assert_same_curve(full, reference(make_ref, 12, per_batch=per_batch, metrics=metrics))
    for split in (17, 3 * SPE):
        opt = make_opt()
        sched = make(opt)
        head = drive(sched, opt, 0, split, metrics)
        state = round_trip({"sched": sched.state_dict(), "opt": opt.state_dict()})
        opt = make_opt()
        opt.load_state_dict(state["opt"])
        sched = make(opt)
        sched.load_state_dict(state["sched"])
        assert_same_curve(head + drive(sched, opt, split, 12 * SPE, metrics), full)


def test_warmup_is_refused_where_it_cannot_apply_with_one_message():
    for target, fn in [("dlx.schedule.onecycle", schedule.onecycle), ("torch.optim.lr_scheduler.StepLR", tls.StepLR)]:
        assert schedule.option_problems(target, {"warmup_epochs": 0}) == []
        found = schedule.option_problems(target, {"warmup_epochs": 0.5})
        assert found == schedule.option_problems(fn, {"warmup_epochs": 0.5}) and len(found) == 1
        with pytest.raises(ValueError) as err:
            schedule.create_scheduler(functools.partial(fn, step_size=1) if fn is tls.StepLR else fn, make_opt(),
                                      steps_per_epoch=SPE, epochs=2, warmup_epochs=0.5)
        assert str(err.value) == found[0]
    assert "StepLR" in found[0]
    assert schedule.option_problems("dlx.schedule.cosine", {"warmup_epochs": 2}) == []


def test_plateau_mode_auto_asks_mode_for():
    factory = functools.partial(schedule.plateau, monitor="val/acc", patience=0, factor=0.5)
    with pytest.raises(ValueError, match="mode_for"):
        schedule.create_scheduler(factory, make_opt(), steps_per_epoch=SPE, epochs=3)
    opt = make_opt()
    sched = schedule.create_scheduler(factory, opt, steps_per_epoch=SPE, epochs=3, mode_for=metric_mode)
    drive(sched, opt, 0, 3 * SPE, [0.5, 0.6, 0.7])  # rising accuracy: never reduced
    assert lrs_of(opt) == list(TWO_GROUPS)


def test_plateau_shows_the_next_steps_lr_however_epochs_are_numbered():
    # the engine reports the end of the 2nd epoch as step_epoch(2, ...); the lr shown must be the next step's
    opt = make_opt((0.1,))
    sched = create_scheduler("plateau", opt, steps_per_epoch=SPE, epochs=4, patience=0, factor=0.5,
                             warmup_epochs=3)
    drive(sched, opt, 0, 2 * SPE - 1, [1.0])
    sched.step_batch(2 * SPE - 1)
    sched.step_epoch(2, 2.0)
    shown = sched.lr
    sched.step_batch(2 * SPE)
    assert sched.lr == shown


def test_a_factory_that_makes_no_schedule_is_refused():
    with pytest.raises(TypeError, match="neither a torch.optim.lr_scheduler class nor a function returning"):
        schedule.create_scheduler(functools.partial(dict, a=1), make_opt(), steps_per_epoch=SPE, epochs=2)
