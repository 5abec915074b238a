"""robustness metrics."""
