"""Synthetic inputs with known ground truth, one module per source."""
