"""dlx's Hydra sweeper plugin (`hydra/sweeper=dlx`): grid, random and TPE search on Optuna, with pruning,
resumable studies and one MLflow parent run per sweep. The logic lives in dlx.sweep."""
