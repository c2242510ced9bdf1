"""The project's own data: noisy concentric rings in the plane, one ring per class, made on the spot.

dlx calls `rings` with the options of conf/dataset/mydata.yaml and the command line; it returns the
training and test splits and the class count (dlx carves validation from the training split and
normalises with the training split's statistics).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np

from dlx.data import Source
from dlx.options import Range


def rings(*, n_samples: Annotated[int, Range(ge=10)] = 600,
          n_rings: Annotated[int, Range(ge=2)] = 3,
          noise: Annotated[float, Range(ge=0)] = 0.1) -> Source:
    """Ring k has radius k + 1; noise is the std of the Gaussian added to each radius."""
    rng = np.random.default_rng(0)  # the data stay fixed; the run's seed varies the training only
    y = rng.integers(0, n_rings, size=n_samples)
    angle = rng.uniform(0, 2 * np.pi, size=n_samples)
    radius = 1.0 + y + rng.normal(0, noise, size=n_samples)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).astype(np.float32)
    cut = n_samples * 4 // 5  # the last fifth is the test split
    return Source(train=(x[:cut], y[:cut]), test=(x[cut:], y[cut:]), num_classes=n_rings, name="rings")
