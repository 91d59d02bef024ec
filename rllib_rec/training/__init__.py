"""Training runs: run directory and resume, online and offline loops, checkpoints, evaluation, tracking."""
