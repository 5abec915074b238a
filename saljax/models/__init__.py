"""The Flax model zoo and the pretrained registry."""
