"""dlx: a deep-learning experiment lab for the command line."""

__version__ = "0.1.0"
