import copy
import io
import math

import pytest
import torch
from torch.optim import lr_scheduler as tls

from dlx.schedule import LRSchedule, create_scheduler, list_schedulers

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
        if (step + 1) % SPE == 0:
            epoch = step // SPE
            sched.step_epoch(epoch, metrics[epoch] if metrics else None)
    return curve


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
    "multistep": (dict(milestones=[3, 1, 4], gamma=0.3), 6, TWO_GROUPS, False,
                  lambda o: tls.MultiStepLR(o, milestones=[1, 3, 4], gamma=0.3)),
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
    curve = [row[0] for row in ours(name, 6, metrics=LOSSES, **SHORT_KNOBS[name])]
    epochs = [curve[i : i + SPE] for i in range(0, len(curve), SPE)]
    assert all(len(set(e)) == 1 for e in epochs)
    if name != "constant":
        assert len({e[0] for e in epochs}) > 1


@pytest.mark.parametrize("split", [17, 21])  # mid-epoch and at an epoch boundary
@pytest.mark.parametrize("optimizer_first", [True, False])
@pytest.mark.parametrize("name", list_schedulers())
def test_resume_continues_identically(name, split, optimizer_first):
    kwargs = dict(steps_per_epoch=SPE, epochs=6, warmup_epochs=0 if name == "onecycle" else 1.5,
                  **SHORT_KNOBS[name])
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


@pytest.mark.parametrize("name", list_schedulers())
def test_state_dict_is_plain_and_fresh_schedule_starts_at_step_zero(name):
    opt = make_opt()
    sched = create_scheduler(name, opt, steps_per_epoch=SPE, epochs=3, **SHORT_KNOBS[name])
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


def test_list_schedulers():
    assert list_schedulers() == ["constant", "cosine", "cosine_restarts", "exponential", "multistep", "onecycle",
                                 "plateau", "step"]


def test_errors_name_the_bad_key_and_list_valid_ones():
    with pytest.raises(ValueError, match="unknown scheduler 'linear'; valid: constant, cosine, cosine_restarts"):
        create_scheduler("linear", make_opt(), steps_per_epoch=SPE, epochs=2)
    with pytest.raises(ValueError) as err:
        create_scheduler("step", make_opt(), steps_per_epoch=SPE, epochs=2, milestones=[1])
    assert str(err.value) == ("scheduler 'step' has no option 'milestones'; valid: step_size, gamma, "
                              "steps_per_epoch, epochs, warmup_epochs, warmup_start_factor")
    with pytest.raises(ValueError, match="anneal='cosine' is not one of cos, linear"):
        create_scheduler("onecycle", make_opt(), steps_per_epoch=SPE, epochs=2, anneal="cosine")
    with pytest.raises(ValueError, match="mode='best' is not one of min, max"):
        create_scheduler("plateau", make_opt(), steps_per_epoch=SPE, epochs=2, mode="best")
    with pytest.raises(ValueError, match="onecycle.*warmup_epochs"):
        create_scheduler("onecycle", make_opt(), steps_per_epoch=SPE, epochs=2, warmup_epochs=1)
    with pytest.raises(ValueError, match="t_mult"):
        create_scheduler("cosine_restarts", make_opt(), steps_per_epoch=SPE, epochs=2, t_mult=1.5)
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
