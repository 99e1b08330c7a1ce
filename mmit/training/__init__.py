"""Training: loss, loop, checkpoints and the run summary."""
