"""Training: the sharded train loop, optimizer, checkpoints, evaluation and metrics."""
