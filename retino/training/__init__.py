"""Models, the training loop, checkpoints, data-parallel training, and the train step."""
