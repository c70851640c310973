"""Data sources, protocol splits, augmentations and synthetic anomalies."""
