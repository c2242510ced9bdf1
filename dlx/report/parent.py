"""What a parent run of `dlx cv` or `dlx ensemble` logs about its children as a whole (dlx.cv, dlx.ensemble), as
lines of a report: the K-fold estimate of each metric, or the ensemble against its members."""

from __future__ import annotations

from dlx.report.stats import format_number as num


def parent_notes(metrics: dict[str, float]) -> list[str]:
    return _cv(metrics) + _ensemble(metrics)


def _cv(m: dict[str, float]) -> list[str]:
    names = sorted(k[len("cv/"):-len("_mean")] for k in m if k.startswith("cv/") and k.endswith("_mean"))
    if not names:
        return []
    folds = int(m.get("cv/folds", 0))
    parts = []
    for name in names:
        ci = m.get(f"cv/{name}_ci95")
        text = f"{name} {num(m[f'cv/{name}_mean'])}" + (f" ± {num(ci)}" if ci is not None else "")
        if f"cv/{name}_holdout" in m:
            text += f" (fold 0 alone: {num(m[f'cv/{name}_holdout'])})"
        parts.append(text)
    return [f"cross-validation over {folds} fold runs (mean ± 95% CI over the folds, parent cv/*): " + "; ".join(parts)]


def _ensemble(m: dict[str, float]) -> list[str]:
    if "ensemble/test/acc" not in m:
        return []
    line = (f"ensemble of {int(m.get('ensemble/members', 0))} members (averaged probabilities, parent ensemble/*): "
            f"test/acc {num(m['ensemble/test/acc'])}, test/loss {num(m.get('ensemble/test/loss'))}, "
            f"test/ece {num(m.get('ensemble/test/ece'))}, majority vote acc {num(m.get('ensemble/test/vote_acc'))}")
    members = []
    for name in ("acc", "loss", "ece"):
        mean, ci = m.get(f"members/test/{name}_mean"), m.get(f"members/test/{name}_ci95")
        if mean is not None:
            members.append(f"test/{name} {num(mean)}" + (f" ± {num(ci)}" if ci is not None else ""))
    return [line + ("; the members: " + ", ".join(members) if members else "")]
