"""complexity metrics."""
