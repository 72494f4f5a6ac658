"""Loops, optimisation, checkpoints, logging and the run driver."""
