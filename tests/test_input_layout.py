"""Input layout and the ViT / Eigen-CAM input checks (issue "trustworthy results").

A channel-first image ``[B, C, H, W]`` is refused by every explainer and
metric before any model evaluation (occlusion would otherwise read the channel
axis as height); the ViT methods name themselves in their errors instead of
surfacing a raw flax/JAX error; Eigen-CAM validates a given target.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax import _validation as V
from saljax import model as M

import _all_methods as A
from _tiny_models import tiny_vit

NCHW = (A.SHAPE[0], A.SHAPE[3], A.SHAPE[1], A.SHAPE[2])  # (8, 3, 16, 16)


def _counting(tapped):
  """`tapped` with a forward that records each (eager or traced) evaluation."""
  calls = []

  def forward(x, taps=None):
    calls.append(tuple(x.shape))
    return tapped(x, taps)

  return M.Tapped(forward, tapped.layer_names), calls


@pytest.fixture(scope="module")
def tiny():
  cnn, vit, x, target = A.models()
  return cnn, vit, x, target


# ----------------------------------------------------------------------------
# The layout rule itself.


@pytest.mark.parametrize("shape", [(2, 16, 16, 3), (2, 3, 3, 16), (2, 4, 4, 3), (2, 3, 16, 3),
                                   (2, 4, 4, 16), (2, 1, 8, 4), (2, 3, 7, 16), (2, 3, 16),
                                   (2, 3, 16, 16, 2)])
def test_nhwc_and_other_ranks_are_accepted(shape):
  V.check_input(jnp.zeros(shape))


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (1, 1, 28, 28), (4, 4, 8, 8), (2, 3, 224, 224)])
def test_channel_first_is_refused_with_the_fix(shape):
  with pytest.raises(ValueError, match=r"channel-first \[B, C, H, W\]") as e:
    V.check_input(jnp.zeros(shape))
  msg = str(e.value)
  assert str(shape) in msg and "NHWC" in msg and "jnp.moveaxis(x, 1, -1)" in msg
  # Only shapes are read: the check also holds under a user's jit.
  with pytest.raises(ValueError, match="channel-first"):
    jax.jit(V.check_input)(jnp.zeros(shape))


# ----------------------------------------------------------------------------
# Every registered explainer and metric, before any model evaluation.


@pytest.mark.parametrize("name", saljax.explainers.names())
def test_every_explainer_refuses_channel_first(name, tiny):
  cnn, vit, _, target = tiny
  model, _ = A.explainer_options(name)
  counted, calls = _counting(cnn if model == "cnn" else vit)
  x = jax.random.normal(jax.random.key(0), NCHW)
  with pytest.raises(ValueError, match="channel"):
    A.call_explainer(name, counted, counted, x, target)
  assert calls == [], f"{name} evaluated the model before refusing the input: {calls}"


@pytest.mark.parametrize("name", saljax.metrics.names())
def test_every_metric_refuses_channel_first(name, tiny):
  cnn, _, _, target = tiny
  counted, calls = _counting(cnn)
  x = jax.random.normal(jax.random.key(0), NCHW)
  attribution = jnp.ones(NCHW)
  with pytest.raises(ValueError, match="channel"):
    A.call_metric(name, counted, x, attribution, target)
  assert calls == [], f"{name} evaluated the model before refusing the input: {calls}"


# ----------------------------------------------------------------------------
# ViT methods: the method's name, what was expected and what came.

VIT_METHODS = ["vit_gradcam", "attention_rollout", "class_token_attention"]


@pytest.fixture(scope="module")
def vit():
  _, _, tapped = tiny_vit()
  return tapped, jax.random.normal(jax.random.key(1), (2, 16, 16, 3))


def _call(name, f, x, target=0):
  return getattr(saljax, name)(f, x, target)


@pytest.mark.parametrize("name", VIT_METHODS)
def test_vit_methods_name_a_wrong_rank(name, vit):
  tapped, x = vit
  with pytest.raises(ValueError, match=rf"^{name}: x: expected images \[B, H, W, C\] \(rank 4\),"
                                       r" got shape \(16, 16, 3\)"):
    _call(name, tapped, x[0])
  with pytest.raises(ValueError, match=rf"^{name}: .*rank 4.*\(2, 256, 3\)"):
    _call(name, tapped, x.reshape(2, 256, 3))


@pytest.mark.parametrize("name", VIT_METHODS)
def test_vit_methods_name_a_channel_first_input(name, vit):
  tapped, x = vit
  with pytest.raises(ValueError, match=rf"^{name}: x: .*\(2, 3, 16, 16\).*channel-first"):
    _call(name, tapped, jnp.moveaxis(x, -1, 1))


@pytest.mark.parametrize("name", VIT_METHODS)
def test_vit_methods_name_a_model_that_is_not_tapped(name, vit):
  tapped, x = vit
  for f in (tapped.logits, lambda x: x.mean((1, 2))):
    with pytest.raises(TypeError, match=rf"^{name}: expected a tapped model .*got"):
      _call(name, f, x)


@pytest.mark.parametrize("name", VIT_METHODS)
def test_vit_methods_name_a_non_jittable_model(name, vit):
  tapped, x = vit

  def forward(x, taps=None):
    if float(x.sum()) > -1e30:  # Python control flow on values: not traceable
      return tapped(x, taps)
    return tapped(-x, taps)

  bad = M.Tapped(forward, tapped.layer_names)
  with pytest.raises(ValueError, match=rf"^{name}: .*could not be evaluated.*\(2, 16, 16, 3\)"):
    _call(name, bad, x)


def test_vit_gradcam_validates_its_target(vit):
  tapped, x = vit
  with pytest.raises(ValueError, match=r"^vit_gradcam: target: expected class indices in \[0, 5\)"):
    saljax.vit_gradcam(tapped, x, 7)
  with pytest.raises(TypeError, match=r"^vit_gradcam: target: .*got None"):
    saljax.vit_gradcam(tapped, x, None)


@pytest.mark.parametrize("name", ["attention_rollout", "class_token_attention"])
def test_class_agnostic_vit_methods_accept_none_and_validate_a_given_target(name, vit):
  tapped, x = vit
  want = _call(name, tapped, x, None)
  np.testing.assert_array_equal(_call(name, tapped, x, jnp.array([1, 2])), want)
  np.testing.assert_array_equal(_call(name, tapped, x, "predicted"), want)
  with pytest.raises(ValueError, match=rf"^{name}: target: expected class indices in \[0, 5\)"):
    _call(name, tapped, x, 9)
  with pytest.raises(ValueError, match=rf"^{name}: target: expected shape \(2,\)"):
    _call(name, tapped, x, jnp.array([0, 1, 2]))


# ----------------------------------------------------------------------------
# Eigen-CAM: class-agnostic, but a given target is validated.


def test_eigencam_validates_a_given_target(tiny):
  cnn, _, x, _ = tiny
  x = x[:2]
  want = saljax.eigencam(cnn, x, None, layer="block2")
  np.testing.assert_array_equal(saljax.eigencam(cnn, x, jnp.array([3, 4]), layer="block2"), want)
  np.testing.assert_array_equal(saljax.eigencam(cnn, x, "predicted", layer="block2"), want)
  with pytest.raises(ValueError, match=r"target: expected class indices in \[0, 5\), got \[5\]"):
    saljax.eigencam(cnn, x, jnp.array([0, 5]), layer="block2")
  with pytest.raises(ValueError, match=r"target: expected class indices in \[0, 5\)"):
    saljax.eigencam(cnn, x, -1, layer="block2")
  with pytest.raises(ValueError, match=r"target: expected shape \(2,\) .* got \(3,\)"):
    saljax.eigencam(cnn, x, jnp.array([0, 1, 2]), layer="block2")
  with pytest.raises(TypeError, match="target: expected integer class indices"):
    saljax.eigencam(cnn, x, jnp.array([0.0, 1.0]), layer="block2")
  with pytest.raises(TypeError, match="target: expected integer class indices"):
    saljax.eigencam(cnn, x, 1.5, layer="block2")
  with pytest.raises(ValueError, match="target: expected class indices or 'predicted'"):
    saljax.eigencam(cnn, x, "argmax", layer="block2")
