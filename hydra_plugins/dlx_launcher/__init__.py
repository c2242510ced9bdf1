"""dlx's Hydra launcher: hydra/launcher=dlx_local (see dlx_launcher.py)."""
