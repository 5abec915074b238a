"""Image preprocessing (resize, crop, normalize) for the pretrained models."""
