"""Synthetic tiled datasets with known true poses (ground truth for every later stage)."""
