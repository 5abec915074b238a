import jax.numpy as jnp
import numpy as np

import saljax


def test_ig_on_linear_model_is_exact(linear_model, images):
  f, w = linear_model
  target = jnp.array([0, 3, 4])
  baseline = 0.5 * jnp.ones_like(images)
  attr = saljax.integrated_gradients(f, images, target, baseline=baseline, steps=8)
  expected = (images - baseline) * w[:, target].T.reshape(images.shape)
  np.testing.assert_allclose(attr, expected, atol=1e-5)
