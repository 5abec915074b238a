"""Every bad input of DESIGN.md's Errors paragraph raises before any work,
naming what was expected and what came."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax


def _never_called(x):
  raise AssertionError("the model must not run on bad input")


def test_wrong_rank(linear_model):
  f, _ = linear_model
  with pytest.raises(ValueError, match=r"at least 2 dims.*got shape \(48,\)"):
    saljax.gradient(f, jnp.ones(48), 0)


def test_model_cannot_take_input(linear_model):
  f, _ = linear_model
  with pytest.raises(ValueError, match=r"could not be evaluated on an input of shape \(2, 5\)"):
    saljax.gradient(f, jnp.ones((2, 5)), 0)


def test_model_output_not_logits():
  with pytest.raises(ValueError, match=r"must return logits \[B, C\]"):
    saljax.gradient(lambda x: x.sum(), jnp.ones((2, 3)), 0)


def test_target_out_of_range(linear_model, images):
  f, _ = linear_model
  with pytest.raises(ValueError, match=r"class indices in \[0, 5\), got \[5\] at rows \[1\]"):
    saljax.integrated_gradients(f, images, jnp.array([0, 5, 1]))
  with pytest.raises(ValueError, match=r"expected shape \(3,\).*got \(2,\)"):
    saljax.gradient(f, images, jnp.array([0, 1]))
  with pytest.raises(TypeError, match="integer class indices"):
    saljax.gradient(f, images, jnp.array([0.0, 1.0, 2.0]))
  with pytest.raises(ValueError, match="'predicted'"):
    saljax.gradient(f, images, "top")


@pytest.mark.parametrize("bad", [jnp.ones((3, 4, 4, 3), jnp.int32), np.ones((3, 4, 4, 3), np.uint8)])
def test_non_floating_input(linear_model, bad):
  f, _ = linear_model
  with pytest.raises(TypeError, match=r"floating-point.*got dtype (int32|uint8)"):
    saljax.integrated_gradients(f, bad, 0)


def test_not_an_array(linear_model):
  f, _ = linear_model
  with pytest.raises(TypeError, match="got a list"):
    saljax.gradient(f, [[1.0, 2.0]], 0)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_input(value, images):
  x = images.at[2, 1, 1, 0].set(value)
  with pytest.raises(ValueError, match=r"NaN or inf in batch rows \[2\]"):
    saljax.integrated_gradients(_never_called, x, 0)


def test_baseline_wrong_shape(linear_model, images):
  f, _ = linear_model
  with pytest.raises(ValueError, match=r"baseline: expected shape \(3, 4, 4, 3\) or \(4, 4, 3\), got \(4, 4\)"):
    saljax.integrated_gradients(f, images, 0, baseline=jnp.zeros((4, 4)))
  with pytest.raises(ValueError, match="baseline: expected None, 'zeros', 'blur'"):
    saljax.integrated_gradients(f, images, 0, baseline="black")
  with pytest.raises(ValueError, match="baseline: expected finite"):
    saljax.integrated_gradients(f, images, 0, baseline=jnp.full(images.shape, jnp.nan))


def test_bad_options(linear_model, images):
  f, _ = linear_model
  with pytest.raises(ValueError, match="rule: expected one of"):
    saljax.integrated_gradients(f, images, 0, rule="simpson")
  with pytest.raises(ValueError, match="steps: expected an int >= 1, got 0"):
    saljax.integrated_gradients(f, images, 0, steps=0)
  with pytest.raises(ValueError, match="batch_size: expected an int >= 1, got 0"):
    saljax.integrated_gradients(f, images, 0, batch_size=0)
  with pytest.raises(ValueError, match="noise: expected one of"):
    saljax.smoothgrad(f, images, 0, key=jax.random.key(0), noise="gaussian")
  with pytest.raises(ValueError, match=r"references: expected shape \[R, 4, 4, 3\]"):
    saljax.expected_gradients(f, images, 0, key=jax.random.key(0), references=jnp.ones((2, 3)))
  with pytest.raises(KeyError, match="unknown explainer 'nope'"):
    saljax.smoothgrad(f, images, 0, key=jax.random.key(0), explainer="nope")


def test_not_a_model(images):
  with pytest.raises(TypeError, match="expected a model"):
    saljax.gradient("resnet", images, 0)


def test_unknown_layer_lists_the_layers():
  tapped = saljax.from_features_head(lambda x: x * 2, lambda a: a.sum((1, 2)), name="feat")
  with pytest.raises(ValueError, match=r"unknown layer name\(s\) \['conv9'\]; the model has \['feat'\]"):
    saljax.model.check_layers(tapped, "conv9")
  with pytest.raises(ValueError, match=r"taps: unknown layer\(s\) \['conv9'\]"):
    tapped(jnp.ones((1, 2, 3)), {"conv9": jnp.zeros((1, 2, 3))})
