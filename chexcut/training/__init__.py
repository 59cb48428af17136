"""Training: config and recipes, checkpoint, the loop, signals, distributed."""
