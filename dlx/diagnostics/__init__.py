"""Diagnostics that explain what a run learned, on any dlx model and dataset.

- `hessian_top_eig`: the largest eigenvalue of the training-loss Hessian, by power iteration on
  Hessian-vector products (never forming the Hessian).
- `eps_sharpness`: the epsilon-sharpness of Keskar et al. (2017), by projected gradient ascent in a box.
- `layer_stats`: per-layer activation standard deviation and gradient norm (depth profiles).
- `interpolate`: training and test loss along the straight line between two solutions.

Each works on a fixed subset of samples and a fixed number of iterations, so its cost is bounded and
stated in the config (conf/diagnostics/); `DiagnosticsCallback` runs them during and after a run and
logs their metrics and plots to it.
"""

from dlx.diagnostics.hessian import hessian_top_eig, hvp
from dlx.diagnostics.interpolate import interpolate
from dlx.diagnostics.layers import layer_modules, layer_stats
from dlx.diagnostics.sharpness import eps_sharpness

__all__ = ["eps_sharpness", "hessian_top_eig", "hvp", "interpolate", "layer_modules", "layer_stats"]
