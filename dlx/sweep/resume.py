"""`dlx sweep --resume`: find the stopped sweep in the study storage and replay its own overrides, checked
as typed ones are."""

from __future__ import annotations

from dlx.sweep.checks import key_of, with_defaults

# overrides that locate a sweep rather than define it: not part of the definition `--resume` compares
LOCATORS = ("hydra.sweeper.study_name", "hydra.sweeper.resume", "hydra.sweep.dir", "hydra.mode")
# overrides a resumed sweep may change: where and how fast trials run, not what they are
MUTABLE = ("hydra/launcher", "hydra.launcher.", "hydra.sweeper.batch_size", "hydra.sweeper.storage")


def _is_mutable(override: str) -> bool:
    return key_of(override).startswith(MUTABLE)


def definition(overrides: list[str]) -> list[str]:
    """What defines a sweep: its overrides without where it is stored, how fast it runs, its name."""
    return sorted(o for o in overrides if key_of(o) not in LOCATORS and not _is_mutable(o))


def resume_overrides(name: str | None, overrides: list[str], *, trust: bool = False) -> list[str]:
    """The stopped sweep's own overrides, with the launcher settings given now, pointed at its study.
    What the storage holds is checked as typed input is (`prepare` checks it all again with the rest)."""
    from dlx.config import ConfigError
    from dlx.sweep.settings import default_storage
    from dlx.sweep.space import quote
    from dlx.sweep.study import study_names

    storage = next((o.split("=", 1)[1].strip("'\"") for o in overrides if key_of(o) == "hydra.sweeper.storage"),
                   None) or default_storage()
    studies = [s for s in study_names(storage) if _stored(s) is not None]
    given = definition(with_defaults(overrides)) if definition(overrides) else []
    if name is not None:
        found = [s for s in studies if s.study_name == name]
        if not found:
            known = ", ".join(s.study_name for s in studies[:10]) or "none"
            raise ConfigError(f"--resume {name}: no such sweep in {storage}; recent: {known}")
    else:
        found = [s for s in studies if s.user_attrs.get("dlx.state") != "finished"
                 and (not given or definition(_stored(s)) == given)]
        if not found:
            what = "with these overrides " if given else ""
            raise ConfigError(f"--resume: no unfinished sweep {what}in {storage}; name one: dlx sweep --resume STUDY "
                              f"(recent: {', '.join(s.study_name for s in studies[:10]) or 'none'})")
    study = found[0]
    stored = _stored(study)
    _check_stored(f"--resume {study.study_name}", storage, stored, trust)
    if given and given != definition(stored):
        raise ConfigError(f"--resume {study.study_name}: a resumed sweep keeps its definition; it was started as: "
                          f"{study.user_attrs.get('dlx.command') or ' '.join(definition(stored))}")
    now = {key_of(o): o for o in overrides if _is_mutable(o)}
    kept = [o for o in stored if key_of(o) not in now]
    return [*kept, *now.values(), f"hydra.sweeper.study_name={study.study_name}", "hydra.sweeper.resume=true",
            f"hydra.sweep.dir={quote(study.user_attrs['dlx.sweep_dir'])}"]


def _stored(study) -> list[str] | None:
    """A study's stored overrides and sweep dir as dlx wrote them (a list of strings and a string), else None."""
    overrides, sweep_dir = study.user_attrs.get("dlx.overrides"), study.user_attrs.get("dlx.sweep_dir")
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides) \
            or not isinstance(sweep_dir, str):
        return None
    return list(overrides)


def _check_stored(where: str, storage: str, stored: list[str], trust: bool) -> None:
    """Anyone who can write the study storage can change what a resumed sweep runs: its overrides pass
    the hydra.* rule typed ones pass (the rest is composed and checked with them), and one that names
    code to run is replayed only with the user's --trust-stored."""
    from dlx.compose import check_hydra_overrides, names_code
    from dlx.config import ConfigError

    try:
        check_hydra_overrides(stored)
    except ConfigError as exc:
        raise ConfigError(f"{where}: the overrides stored in {storage} are refused: {exc}") from None
    code = [o for o in stored if names_code(o)]
    if code and not trust:
        raise ConfigError(f"{where}: the override {code[0]} stored in {storage} names code to run; "
                          f"add --trust-stored to run it if you trust that storage")

