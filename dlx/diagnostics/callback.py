"""The diagnostics of one run, switched on by the `diagnostics` config group and logged to its MLflow run.

During training: epochs_to_target when the target metric is first reached; act_std/layer_<k> and
grad_norm/layer_<k> at initialisation (step 0) and every `every_n_epochs` epochs (step = epoch). After
training, on the weights the test split was evaluated on: the generalization gap and the sharpness
metrics, and a depth-profile PNG.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dlx.engine import Callback

log = logging.getLogger("dlx")


class DiagnosticsCallback(Callback):
    def __init__(self, cfg: dict, tracker, run_dir: Path, seed: int = 0):
        self.cfg, self.tracker, self.run_dir, self.seed = cfg, tracker, Path(run_dir), seed
        self.reached: int | None = None
        self.profiles: dict[int, tuple[list[float], list[float]]] = {}
        self._batch = None
        self.sequence = None
        if cfg["sequence"]["enabled"]:
            from dlx.diagnostics.sequence import SequenceDiagnostics

            self.sequence = SequenceDiagnostics(cfg["sequence"], tracker, run_dir, seed)

    @staticmethod
    def wanted(cfg: dict) -> bool:
        return bool(cfg["gap"] or cfg["target"] is not None or cfg["layers"]["enabled"]
                    or cfg["sharpness"]["enabled"] or cfg["sequence"]["enabled"])

    # ------------------------------------------------------------------ during training
    def on_fit_start(self, trainer, state):
        if self.cfg["target"] is not None:  # a resumed run may have reached it before
            self.reached = next((h["epoch"] for h in state.history if self._hit(h)), None)
        if self.cfg["layers"]["enabled"] and state.epoch == 0:
            self._layers(trainer, 0)
        if self.sequence is not None and state.epoch == 0:
            self.sequence.gradients(trainer, "init")

    def on_step(self, trainer, state): ...

    def on_step_log(self, trainer, state, metrics): ...

    def on_epoch_end(self, trainer, state, metrics):
        if self.cfg["target"] is not None and self.reached is None and self._hit(metrics):
            self.reached = state.epoch
            self.tracker.log_metrics({"epochs_to_target": state.epoch}, step=state.epoch)
        layers = self.cfg["layers"]
        if layers["enabled"] and (state.epoch % layers["every_n_epochs"] == 0 or state.epoch >= trainer.opt.epochs
                                  or state.stopped_early):
            self._layers(trainer, state.epoch)

    def _hit(self, metrics: dict) -> bool:
        from dlx.engine import metric_mode

        name, target = self.cfg["target_metric"], self.cfg["target"]
        value = metrics.get(name)
        if value is None:
            return False
        return value >= target if metric_mode(name) == "max" else value <= target

    def _layers(self, trainer, epoch: int) -> None:
        from dlx.diagnostics.common import fixed_subset
        from dlx.diagnostics.layers import layer_stats

        if self._batch is None:
            self._batch = fixed_subset(trainer.data.train, self.cfg["layers"]["samples"], self.seed)
        act, grad = layer_stats(trainer.model, trainer.eval_loss_fn, *self._batch)
        self.profiles[epoch] = (act, grad)
        metrics = {f"act_std/layer_{k}": v for k, v in enumerate(act)}
        metrics.update({f"grad_norm/layer_{k}": v for k, v in enumerate(grad)})
        if act and act[0] > 0:
            metrics["act_std/ratio"] = act[-1] / act[0]  # last hidden layer over first: < 1 shrinks with depth
        if len(grad) > 1 and grad[-2] > 0:
            metrics["grad_norm/ratio"] = grad[0] / grad[-2]  # first layer over last hidden: < 1 vanishes
        if epoch == 0:
            metrics.update({f"init/{k.replace('/', '_')}": v for k, v in metrics.items() if k.endswith("ratio")})
        self.tracker.log_metrics(metrics, step=epoch)

    # ------------------------------------------------------------------ after training
    def finish(self, trainer, test: dict) -> dict[str, float]:
        """The end-of-run diagnostics on the model as it is now; returns the metrics (the caller logs them)."""
        out: dict[str, float] = {}
        data = trainer.data
        if self.cfg["gap"] and len(data.train):
            train = trainer.evaluate(data.train)  # held or streamed alike
            out.update({"final/train_loss": train["loss"], "final/train_acc": train["acc"],
                        "gap/acc": train["acc"] - test["acc"], "gap/loss": test["loss"] - train["loss"]})
        s = self.cfg["sharpness"]
        if s["enabled"] and len(data.train):
            from dlx.diagnostics.common import fixed_subset
            from dlx.diagnostics.hessian import hessian_top_eig
            from dlx.diagnostics.sharpness import eps_sharpness

            x, y = fixed_subset(data.train, s["samples"], self.seed)
            t0 = time.perf_counter()
            eig, iters = hessian_top_eig(trainer.model, trainer.eval_loss_fn, x, y, iters=s["hessian_iters"],
                                         tol=s["hessian_tol"], seed=self.seed)
            phi = eps_sharpness(trainer.model, trainer.eval_loss_fn, x, y, eps=s["eps"], steps=s["eps_steps"])
            out.update({"sharpness/hessian_top_eig": eig, "sharpness/hessian_iters": iters, "sharpness/eps": phi,
                        "sharpness/seconds": time.perf_counter() - t0})
            log.info("sharpness on %d training samples: Hessian top eigenvalue %.4g (%d iterations), "
                     "eps-sharpness %.4g%% at eps=%g", len(x), eig, iters, phi, s["eps"])
        if self.profiles and self.tracker.enabled:
            from dlx.diagnostics.plots import plot_depth_profiles

            png = plot_depth_profiles({"run": self.profiles}, self.run_dir / "depth_profiles.png",
                                      title="layer statistics at initialisation and at the end")
            self.tracker.log_artifact(png, "plots")
        if self.sequence is not None:  # gradient through time and attention maps (dlx.diagnostics.sequence)
            self.sequence.finish(trainer)
        return out
