"""faithfulness metrics."""
