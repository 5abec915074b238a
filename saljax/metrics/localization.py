"""localization metrics."""
