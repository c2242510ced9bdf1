"""2-D toy datasets generated on the fly: quick to train on and easy to plot decision boundaries for."""

from __future__ import annotations

import math

import numpy as np

from dlx.data.splits import DatasetError

# Generation uses a fixed seed: the data set itself is part of the experiment's definition, while
# split_seed only decides which of its samples go to val.
DATA_SEED = 0
MIN_SAMPLES_PER_CLASS = 10


def _check_per_class(n_samples: int, n_classes: int) -> None:
    # a rule joining two options; each one's own range is in its loader's signature (dlx.data.builtin)
    if n_samples < MIN_SAMPLES_PER_CLASS * n_classes:
        raise DatasetError(
            f"dataset.n_samples={n_samples} is too small for {n_classes} classes: allowed >= "
            f"{MIN_SAMPLES_PER_CLASS * n_classes} ({MIN_SAMPLES_PER_CLASS} per class) so every split gets every class"
        )


def make_moons(*, n_samples: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles (scikit-learn's generator); noise is the std of the Gaussian
    added to each coordinate. Returns x (n_samples, 2) float32 and y int64 in {0, 1}."""
    # Imported here: scikit-learn takes over a second to import, which `import dlx.data` should not pay.
    from sklearn.datasets import make_moons as _sklearn_moons

    _check_per_class(n_samples, 2)
    x, y = _sklearn_moons(n_samples=int(n_samples), noise=float(noise), random_state=DATA_SEED)
    return x.astype(np.float32), y.astype(np.int64)


def make_spirals(
    *, n_samples: int, noise: float, n_classes: int, turns: float
) -> tuple[np.ndarray, np.ndarray]:
    """n_classes interleaved spiral arms in the unit disc, each winding `turns` times around the centre.

    A point at position t in [0, 1) along arm k sits at radius t and angle 2*pi*(turns*t + k/n_classes).
    noise is the std (in radians) of a Gaussian jitter of that angle, as in the classic spiral
    benchmark: it thickens the arms near the rim more than near the centre. Classes get equal sizes
    (the first n_samples % n_classes arms one sample more). Returns x (n_samples, 2) float32, y int64.
    """
    _check_per_class(n_samples, n_classes)

    rng = np.random.default_rng(DATA_SEED)
    sizes = [int(n_samples) // n_classes + (k < int(n_samples) % n_classes) for k in range(n_classes)]
    y = np.repeat(np.arange(n_classes, dtype=np.int64), sizes)
    t = rng.uniform(0.0, 1.0, size=len(y))
    angle = 2.0 * math.pi * (turns * t + y / n_classes) + rng.normal(0.0, float(noise), size=len(y))
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1)
    # Shuffle so that sample order carries no label information (matters for unshuffled loaders).
    order = rng.permutation(len(y))
    return x[order].astype(np.float32), y[order]
