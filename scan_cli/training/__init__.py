"""`scan fit`: recipes, the SCAN loss, the learning-rate schedule, checkpoints and the training loop."""
