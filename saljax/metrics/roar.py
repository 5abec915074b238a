"""roar metrics."""
