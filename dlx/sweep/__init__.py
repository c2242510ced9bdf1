"""`dlx sweep` and `dlx study`: Hydra multirun driven by an Optuna study, trials nested under one
MLflow parent run. The sweeper is the Hydra plugin in hydra_plugins/dlx_sweeper; this package holds
the pieces it is made of (search space, trial task, progress, summary)."""
