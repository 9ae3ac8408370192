"""Training: data, caches, the epoch loop, checkpoints and the `train` stage."""
