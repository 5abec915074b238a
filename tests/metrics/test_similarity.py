"""The in-jit similarities against scipy and scikit-image."""
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
import skimage.feature
import skimage.metrics

from saljax.metrics import _common as C
from saljax.metrics import _similarity as S

RNG = np.random.default_rng(0)


def test_spearman_matches_scipy_with_ties():
  a = RNG.integers(0, 5, size=(3, 40)).astype(np.float32)  # many ties
  b = RNG.normal(size=(3, 40)).astype(np.float32)
  ours = C.spearman(jnp.asarray(a), jnp.asarray(b))
  ref = [scipy.stats.spearmanr(a[i], b[i]).statistic for i in range(3)]
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  np.testing.assert_allclose(C.spearman(jnp.asarray(b), jnp.asarray(b)), 1.0, atol=1e-6)
  np.testing.assert_allclose(C.spearman(jnp.ones((2, 5)), jnp.asarray(b[:2, :5])), 0.0)


def test_ssim_matches_skimage():
  a = RNG.uniform(size=(2, 24, 20)).astype(np.float32)
  b = np.clip(a + 0.2 * RNG.normal(size=a.shape), 0, 1).astype(np.float32)
  ours = S.ssim(jnp.asarray(a), jnp.asarray(b))
  ref = [skimage.metrics.structural_similarity(a[i], b[i], data_range=1.0, gaussian_weights=True)
         for i in range(2)]
  np.testing.assert_allclose(ours, ref, atol=1e-4)
  np.testing.assert_allclose(S.ssim(jnp.asarray(a), jnp.asarray(a)), 1.0, atol=1e-5)


def test_hog_matches_skimage():
  m = RNG.uniform(size=(2, 40, 32)).astype(np.float32)
  ours = np.asarray(S.hog(jnp.asarray(m), pixels_per_cell=8))
  for i in range(2):
    ref = skimage.feature.hog(m[i], orientations=9, pixels_per_cell=(8, 8), cells_per_block=(3, 3),
                              block_norm="L2-Hys", feature_vector=True)
    assert ref.shape == ours[i].shape
    np.testing.assert_allclose(ours[i], ref, atol=2e-4)
