"""``removal=`` on the remaining removal-based explainers and metrics (issue 18,
part 4): Shapley sampling, Owen values, Sobol, HSIC, LiMA, extremal
perturbation, and the faithfulness, ROAR and contrastive metrics that remove
features. Tiny models on 8x8 images; compiles are shared through
module-scoped fixtures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax import removal as R
from saljax.explainers import _masking as MK
from saljax.explainers import perturbation as P
from saljax.explainers import regions
from saljax.metrics import perturbation as MP
from saljax.models.cnn import cnn
from tests._removal_fixtures import tiny_vit

KEY = jax.random.key(11)
T = jnp.asarray([0, 1, 2])
GRID = dict(segments="grid", segmentation_options={"cells": 2})  # 4 groups = the ViT's 4 patches


@pytest.fixture(scope="module")
def linear_model():
  """A linear model on 8x8x3 images, 3 classes: quick to compile, for the
  checks that any model passes (the constant strategy is ``fill=``)."""
  w = jax.random.normal(jax.random.key(4), (192, 3)) / 8.0
  return lambda z: z.reshape(z.shape[0], -1) @ w


@pytest.fixture(scope="module")
def cnn_model():
  """A random two-block CNN on 8x8 images, as its mask-aware model."""
  module = cnn(3, (4, 8), 8)
  x = jax.random.normal(jax.random.key(2), (3, 8, 8, 3))
  return R.mask_aware(module, module.init(jax.random.key(3), x)), x


@pytest.fixture(scope="module")
def vit_model():
  """A random ViT on 8x8 images, patch 4 (4 tokens and the class token)."""
  return tiny_vit()


_TOKENS: dict = {}


def _on_tokens(vit_model, b, patches):
  """Logits [C] of example b with only the patch tokens `patches` (row-major)
  kept: the ViT run on those tokens alone (one compile per token count,
  answers cached across the tests of this module)."""
  module, variables, x = vit_model
  idx = tuple(sorted(int(p) for p in patches))
  if "apply" not in _TOKENS:
    _TOKENS["apply"] = jax.jit(lambda v, xb, i: module.apply(v, xb, tokens=i))
  if (b, idx) not in _TOKENS:
    _TOKENS[b, idx] = _TOKENS["apply"](variables, x[b:b + 1],
                                       jnp.asarray(idx, jnp.int32).reshape(1, -1))[0]
  return _TOKENS[b, idx]


def _group_patch(labels, b):
  """Patch token index (row-major, 4x4 patches) of each grid group of example b."""
  lab = np.asarray(labels)[b]
  lab = lab[..., 0] if lab.ndim == 3 else lab
  return {int(lab[4 * r, 4 * c]): 2 * r + c for r in range(2) for c in range(2)}


# ----------------------------------------------------------------------------
# Explainers: the constant strategy is fill=, layer masking hides the fill.

EXPLAINERS = {
    "shapley_sampling": dict(key=KEY, samples=2, **GRID),
    "owen_values": dict(**GRID),
    "sobol": dict(grid=2, designs=4),
    "hsic": dict(key=KEY, grid=2, samples=8),
    "lima": dict(pending=2, **GRID),
}


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_explainer_removal_option(name, linear_model, cnn_model):
  fn = saljax.explainers.get(name)
  opts = EXPLAINERS[name]
  ma, x = cnn_model
  const = fn(linear_model, x, T, removal=R.Removal("constant", 0.3), **opts)
  np.testing.assert_array_equal(const, fn(linear_model, x, T, fill=0.3, **opts))
  assert np.abs(const - fn(linear_model, x, T, fill=0.0, **opts)).max() > 1e-4
  lm = fn(ma, x, T, removal="layer_mask", fill=0.0, **opts)
  assert lm.shape == x.shape and np.isfinite(lm).all() and np.abs(lm).max() > 1e-4
  # Sobol's masks are soft (as RISE's): the pixels it keeps still blend toward
  # the fill, so only there does the fill matter under layer masking.
  if name != "sobol":
    np.testing.assert_allclose(lm, fn(ma, x, T, removal="layer_mask", fill=9.0, **opts),
                               atol=1e-5)


def test_explainer_pixel_kinds_replace_fill(linear_model, cnn_model):
  _, x = cnn_model
  fn = saljax.explainers.get("shapley_sampling")
  opts = EXPLAINERS["shapley_sampling"]
  f = linear_model
  np.testing.assert_array_equal(fn(f, x, T, removal="mean", **opts),
                                fn(f, x, T, fill="mean", **opts))
  np.testing.assert_array_equal(fn(f, x, T, removal=R.Removal("blur", blur_sigma=2.0), **opts),
                                fn(f, x, T, fill="blur", blur_sigma=2.0, **opts))


def test_shapley_sampling_token_drop_is_the_kept_tokens_score(vit_model):
  module, variables, x = vit_model
  ma = R.mask_aware(module, variables)
  phi = saljax.explainers.get("shapley_sampling")(ma, x, T, key=KEY, samples=2,
                                                   removal="token_drop", **GRID)
  labels, counts, m = MK.feature_groups(x, GRID["segments"], GRID["segmentation_options"])
  pos = np.asarray(P._permutation_positions(KEY, 2, jnp.asarray(counts, jnp.int32), m, False))
  for b in range(3):
    patch = _group_patch(labels, b)
    for g in range(m):
      gain = 0.0
      for s in range(2):  # the mean gain over the two permutations
        before = [patch[h] for h in range(m) if pos[s, b, h] < pos[s, b, g]]
        gain += (_on_tokens(vit_model, b, before + [patch[g]])[T[b]]
                 - _on_tokens(vit_model, b, before)[T[b]]) / 2
      # Every pixel of group g carries its gain (the group is one ViT patch).
      r, c = divmod(patch[g], 2)
      np.testing.assert_allclose(phi[b, 4 * r:4 * r + 4, 4 * c:4 * c + 4], gain, atol=1e-5)


def test_lima_token_drop_curves_are_the_kept_tokens_probabilities(vit_model):
  module, variables, x = vit_model
  ma = R.mask_aware(module, variables)
  out = regions.lima_search(ma, x, T, removal="token_drop", pending=2, **GRID)
  order = np.asarray(out["order"])
  for b in range(3):
    patch = _group_patch(out["labels"], b)
    ranked = [patch[int(g)] for g in order[b]]
    for k in range(5):
      p_in = jax.nn.softmax(_on_tokens(vit_model, b, ranked[:k]))[T[b]]
      p_out = jax.nn.softmax(_on_tokens(vit_model, b, ranked[k:]))[T[b]]
      np.testing.assert_allclose(out["insertion"][b, k], p_in, atol=1e-5)
      np.testing.assert_allclose(out["deletion"][b, k], p_out, atol=1e-5)


def test_extremal_perturbation_pixel_removal(cnn_model):
  ma, x = cnn_model
  fn = saljax.explainers.get("extremal_perturbation")
  opts = dict(iterations=2, area=0.25, step=2, sigma=3.0, max_blur=3.0)
  const = fn(ma, x, T, removal=R.Removal("constant", 0.0), **opts)
  assert const.shape == x.shape and float(const.min()) >= 0.0 and float(const.max()) <= 1.0
  # Another fill, another optimization path: the masks move (one compiled
  # program: the fill is data).
  before = saljax.explainers._extremal._extremal._cache_size()
  assert np.abs(fn(ma, x, T, removal="mean", **opts) - const).max() > 1e-6
  assert saljax.explainers._extremal._extremal._cache_size() == before
  with pytest.raises(ValueError, match="extremal_perturbation: removal='layer_mask'.*no gradient"):
    fn(ma, x, T, removal="layer_mask", **opts)


# ----------------------------------------------------------------------------
# Metrics.

SEG = np.repeat(np.repeat(np.arange(4).reshape(2, 2), 4, 0), 4, 1)
METRICS = {  # name: (the fill argument, options)
    "faithfulness_estimate": ("baseline", dict(features_in_step=16)),
    "monotonicity": ("baseline", dict(features_in_step=16)),
    "faithfulness_correlation": ("baseline", dict(key=KEY, samples=4, subset_size=8)),
    # n_values=(8,), regions=4: the compiled programs of faithfulness_correlation and selectivity.
    "sensitivity_n": ("baseline", dict(key=KEY, samples=4, n_values=(8,))),
    "region_perturbation": ("fill", dict(patch_size=4, regions=4)),
    "selectivity": ("fill", dict(patch_size=4)),
    "irof": ("fill", dict(segments=SEG)),
    "diffroar": ("fill", dict(fraction=0.5)),
    "contrastive_class_score": ("fill", dict(contrast=jnp.asarray([1, 2, 0]), alphas=(0.25, 0.5))),
    "non_sensitivity": ("fill", dict(features="pixel", eps=1e-3)),
}


def _score(r):
  return r["score"] if isinstance(r, dict) else r


def _fill_value(name, v, x):
  # The contrastive metrics take fills as arrays (or names), not floats.
  return jnp.full(x.shape, v) if name == "contrastive_class_score" else v


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metric_removal_option(name, linear_model, cnn_model):
  fn = saljax.metrics.get(name)
  arg, opts = METRICS[name]
  ma, x = cnn_model
  att = jax.random.normal(jax.random.key(12), x.shape)
  f = linear_model
  np.testing.assert_array_equal(
      _score(fn(f, x, att, T, removal=R.Removal("constant", 0.3), **opts)),
      _score(fn(f, x, att, T, **{arg: _fill_value(name, 0.3, x)}, **opts)))
  lm = _score(fn(ma, x, att, T, removal="layer_mask", **opts))
  assert lm.shape == (3,) and np.isfinite(lm).all()
  np.testing.assert_allclose(
      lm, _score(fn(ma, x, att, T, removal="layer_mask", **{arg: _fill_value(name, 9.0, x)},
                    **opts)), atol=1e-5)


def _patch_att():
  """Relevance constant on each 4x4 patch, a different patch order per example."""
  vals = np.asarray([[3, 1, 4, 2], [1, 2, 3, 4], [4, 3, 2, 1]], np.float32)
  a = np.repeat(np.repeat(vals.reshape(3, 2, 2), 4, 1), 4, 2)
  return jnp.asarray(np.broadcast_to(a[..., None], (3, 8, 8, 3))), np.argsort(-vals, axis=1)


def test_selectivity_token_drop_is_the_kept_tokens_probability(vit_model):
  module, variables, x = vit_model
  att, ranked = _patch_att()
  out = saljax.metrics.get("selectivity")(R.mask_aware(module, variables), x, att, T,
                                          patch_size=4, removal="token_drop")
  for b in range(3):
    for k in range(4):  # the first k patches (most relevant first) dropped
      p = jax.nn.softmax(_on_tokens(vit_model, b, ranked[b, k:]))[T[b]]
      np.testing.assert_allclose(out["curve"][b, k], p, atol=1e-5)


def test_region_perturbation_layer_mask_is_removed_logits(cnn_model):
  ma, x = cnn_model
  att, ranked = _patch_att()
  out = saljax.metrics.get("region_perturbation")(ma, x, att, T, patch_size=4, regions=4,
                                                  removal="layer_mask")
  keep = np.ones((3, 8, 8), bool)
  for b in range(3):
    r, c = divmod(int(ranked[b, 0]), 2)
    keep[b, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = False
  want = jax.nn.softmax(R.removed_logits(ma, x, keep, "layer_mask"))[np.arange(3), T]
  full = jax.nn.softmax(ma(x))[np.arange(3), T]
  np.testing.assert_allclose(out["curve"][:, 1], full - want, atol=1e-5)


def test_remove_by_attribution_pixel_kinds(cnn_model):
  _, x = cnn_model
  att = jax.random.normal(jax.random.key(12), x.shape)
  rba = saljax.metrics.remove_by_attribution
  np.testing.assert_array_equal(rba(x, att, 0.5, removal=R.Removal("constant", 0.3)),
                                rba(x, att, 0.5, fill=0.3))
  np.testing.assert_array_equal(rba(x, att, 0.5, removal="mean"), rba(x, att, 0.5, fill="mean"))
  with pytest.raises(ValueError, match="remove_by_attribution: removal='token_drop'"):
    rba(x, att, 0.5, removal="token_drop")


# ----------------------------------------------------------------------------
# Chunking, compiles, errors.


def test_chunked_equals_unchunked_and_compiles_once(vit_model):
  module, variables, x = vit_model
  ma = R.mask_aware(module, variables)
  shap = saljax.explainers.get("shapley_sampling")
  kw = dict(key=KEY, samples=2, removal="token_drop", **GRID)
  whole = shap(ma, x, T, **kw)
  np.testing.assert_allclose(shap(ma, x, T, batch_size=2, **kw), whole, atol=1e-6)
  sel = saljax.metrics.get("selectivity")
  att, _ = _patch_att()
  curve = sel(ma, x, att, T, patch_size=4, removal="token_drop")["curve"]
  np.testing.assert_allclose(sel(ma, x, att, T, patch_size=4, removal="token_drop",
                                 batch_size=2)["curve"], curve, atol=1e-6)
  # New weights and inputs of the same shapes reuse the compiled programs.
  before = (P._shapley_sampling._cache_size(), MP._patch_curve._cache_size())
  other = R.mask_aware(module, jax.tree_util.tree_map(lambda a: a + 0.01, variables))
  shap(other, x * 2.0, T, **kw)
  sel(other, x * 2.0, att, T, patch_size=4, removal="token_drop")
  assert (P._shapley_sampling._cache_size(), MP._patch_curve._cache_size()) == before


def _plain(z):
  return z.reshape(z.shape[0], -1)[:, :3]


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_explainer_without_mask_forward_errors(name, cnn_model):
  _, x = cnn_model
  with pytest.raises(TypeError, match=f"{name}: removal='token_drop' needs the model's mask-aware"):
    saljax.explainers.get(name)(_plain, x, T, removal="token_drop", **EXPLAINERS[name])


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metric_without_mask_forward_errors(name, cnn_model):
  _, x = cnn_model
  with pytest.raises(TypeError, match=f"{name}: removal='layer_mask' needs the model's mask-aware"):
    saljax.metrics.get(name)(_plain, x, x, T, removal="layer_mask", **METRICS[name][1])


def test_metric_removal_misuse_errors(cnn_model):
  ma, x = cnn_model
  with pytest.raises(ValueError, match="non_sensitivity: removal='layer_mask' removes whole"):
    saljax.metrics.get("non_sensitivity")(ma, x, x, T, removal="layer_mask")
  with pytest.raises(TypeError, match=r"diffroar \(f_bottom\): removal='layer_mask'"):
    saljax.metrics.get("diffroar")(ma, x, x, T, removal="layer_mask", f_bottom=_plain)
  with pytest.raises(TypeError, match="removal: expected None"):
    saljax.metrics.get("selectivity")(ma, x, x, T, removal=3)


def test_remove_by_attribution_and_roar_keep_the_removals_blur_sigma():
  """A pixel Removal("blur", blur_sigma=s) blurs with s, not the fill default 5."""
  from saljax.metrics import _common as MC
  from saljax.metrics import removal as MR
  x = jax.random.uniform(jax.random.key(0), (2, 12, 12, 3))
  a = jax.random.normal(jax.random.key(1), (2, 12, 12))
  rem = R.Removal("blur", blur_sigma=2.0)
  got = MR.remove_by_attribution(x, a, 0.5, removal=rem)
  want = MR.remove_by_attribution(x, a, 0.5, fill=MC.make_fill(x, "blur", blur_sigma=2.0))
  np.testing.assert_array_equal(got, want)
  assert np.abs(got - MR.remove_by_attribution(x, a, 0.5, fill="blur")).max() > 1e-3
  # roar hands the Removal down, so the model sees the sigma-2 blur.
  w = jax.random.normal(jax.random.key(2), (12 * 12 * 3, 3))
  f = jax.tree_util.Partial(lambda w, z: z.reshape(z.shape[0], -1) @ w, w)
  t = jnp.argmax(f(want), -1)
  np.testing.assert_array_equal(MR.roar(f, x, a, t, removal=rem), np.ones(2))
