"""randomization metrics."""
