"""Tiny models shared by the removal tests (tests/test_removal*.py)."""
import jax

from saljax.models.vit import vit


def tiny_vit():
  """A random ViT on 8x8 images, patch 4 (4 tokens and the class token):
  ``(module, variables, x)``."""
  module = vit("vit_tiny", num_classes=3, patch=4, dim=16, depth=1, num_heads=2, mlp_dim=16)
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 3))
  variables = module.init(jax.random.key(1), x)
  return module, variables, x
