"""Training: pseudo-anomaly synthesis (numpy), losses, the training loop, checkpoints, eval."""
