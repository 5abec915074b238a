"""contrastive metrics."""
