"""Applications built on Spillway, each runnable and each tested by ``make test``."""
