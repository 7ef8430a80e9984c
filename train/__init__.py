"""Training: losses, the training loop, checkpoints, eval. The pseudo-anomaly synthesis
(numpy) is in the core, `dmgrd_edge.data.synthesis`, shared with calibration."""
