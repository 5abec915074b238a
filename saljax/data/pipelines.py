"""tfds pipelines read with tfds.data_source (no TensorFlow needed)."""
