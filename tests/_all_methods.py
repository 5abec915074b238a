"""Every registered explainer and metric on tiny models, with the registry's
smoke options and the arguments its `needs` name.

Shared by tests/test_contracts.py, tests/test_registry_facts.py,
tests/test_composability.py and tests/parallel/_sharded_all.py: a new method
joins every invariant through its registry entry alone.
"""
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "explainers"))
from _tiny_models import tiny_cnn, tiny_vit  # noqa: E402

import saljax  # noqa: E402

SHAPE = (8, 16, 16, 3)  # 8 rows: one per simulated device


def grid_segments(shape=SHAPE, cell=4):
  b, h, w = shape[:3]
  seg = (jnp.arange(h)[:, None] // cell) * (w // cell) + jnp.arange(w)[None, :] // cell
  return jnp.broadcast_to(seg, (b, h, w)).astype(jnp.int32)


_CNN = tiny_cnn(SHAPE)


def models():
  """(cnn tapped, vit tapped, x, target)."""
  _, _, cnn = _CNN
  _, _, vit = tiny_vit(SHAPE)
  x = jax.random.normal(jax.random.key(42), SHAPE)
  target = jnp.arange(SHAPE[0], dtype=jnp.int32) % 5
  return cnn, vit, x, target


def cnn_as_function_of_params():
  """(model_fn(params, x) -> logits, params) of the tiny CNN, for randomization tests."""
  module, variables, _ = _CNN
  return (lambda p, x: module.apply({"params": p}, x)), variables["params"]


# What the tiny models supply for each of the registry's `needs`.
CNN_LAYER, CNN_LAYERS = "block2", ["block1", "block2"]


def _supplied(entry, shape=SHAPE):
  """Arguments for the entry's `needs` (besides the model and a key)."""
  out = {}
  if "references" in entry.needs:
    out["references"] = jax.random.normal(jax.random.key(3), (4,) + tuple(shape[1:]))
  if "segments" in entry.needs:
    out["segments"] = grid_segments(shape)
  if "tapped" in entry.needs:
    out["layer"] = CNN_LAYERS if "layers" in entry.needs else CNN_LAYER
  if "mask" in entry.needs:
    out["mask"] = jnp.zeros(shape[:3], bool).at[:, :8, :8].set(True)
  if "mosaic" in entry.needs:  # x read as 2x2 mosaics, the target in the left column
    out["quadrants"] = np.tile(np.array([[True, False, True, False]]), (shape[0], 1))
  if "explainer" in entry.needs:
    out["explainer"] = saljax.gradient
  if "classes" in entry.needs:
    # The contrastive scores: a contrast class, or the target's group and another.
    params = entry.options()
    if "contrast" in params:
      out["contrast"] = 1
    if "group" in params:
      out["group"] = np.array([0]) if "contrast_group" in params else np.array([0, 1])
    if "contrast_group" in params:
      out["contrast_group"] = np.array([1, 2])
  return out


def explainer_options(name):
  """(which model: "cnn" or "vit", options): the registry's smoke options and
  what the entry needs."""
  entry = saljax.explainers.entry(name)
  model = "vit" if "vit" in entry.needs else "cnn"
  return model, {**entry.smoke, **_supplied(entry)}


def metric_options(name):
  entry = saljax.metrics.entry(name)
  return {**entry.smoke, **_supplied(entry)}


_PROMPT_CAM = []  # the tiny Prompt-CAM model, built on first use


def _over_forward(pcam, vit, x, taps=None):
  logits, acts = pcam(x, taps)
  return logits + 0.0 * vit(x)[0].astype(logits.dtype), acts


def prompt_cam_over(vit):
  """A tiny random Prompt-CAM model (5 class prompts, as the tiny ViT's 5
  classes) for methods that need one (``"prompt_cam"`` in their needs); its
  forward also runs `vit` (adding ``0 *`` its logits), so the tests that count
  traces of, poison, cast or stack the tiny ViT reach it too (both are leaves
  of the returned pytree)."""
  if not _PROMPT_CAM:
    from saljax.models import prompt_cam as pc
    m = pc.prompt_cam("vit_tiny", 5, patch=4, dim=16, depth=2, num_heads=2, mlp_dim=32)
    ex = jnp.zeros((1,) + SHAPE[1:])
    _PROMPT_CAM.append(saljax.from_linen(m, m.init(jax.random.key(5), ex), example=ex))
  pcam = _PROMPT_CAM[0]
  return saljax.Tapped(jax.tree_util.Partial(_over_forward, pcam, vit), pcam.layer_names)


def vit_for(entry, vit):
  """The tapped ViT a method gets: `vit`, or a Prompt-CAM model over it."""
  return prompt_cam_over(vit) if "prompt_cam" in entry.needs else vit


def call_explainer(name, cnn, vit, x, target, key=jax.random.key(0)):
  return call_explainer_with(name, cnn, vit, x, target, key=key)


def call_explainer_with(name, cnn, vit, x, target, key=jax.random.key(0), **overrides):
  """`call_explainer` with options overriding the smoke options."""
  model, opts = explainer_options(name)
  entry = saljax.explainers.entry(name)
  tapped = cnn if model == "cnn" else vit_for(entry, vit)
  f = tapped if entry.kind == "layer" else tapped.logits
  extra = {"key": key} if entry.stochastic else {}
  return entry.fn(f, x, target, **extra, **{**opts, **overrides})


@functools.lru_cache(maxsize=None)
def _params_model(cnn):
  """model_fn(params, x) that also runs `cnn`, so tests can count its traces; one
  function object per `cnn`, so jit caches see the same static argument."""
  model_fn, _ = cnn_as_function_of_params()
  # `0 * cnn's logits` adds exact zeros, unless `cnn` returns NaN/inf (the
  # non-finite-output tests pass a poisoned `cnn`, which must reach the result).
  return lambda p, x: model_fn(p, x) + 0.0 * cnn(x)[0]


@functools.lru_cache(maxsize=None)
def _random_label_model(cnn):
  """The tiny CNN with other parameters, standing in for one trained on
  permuted labels; also runs `cnn` so tests count its traces."""
  model_fn, params = cnn_as_function_of_params()
  other = jax.tree_util.tree_map(lambda w: -w[::-1], params)
  return lambda x: (cnn(x), model_fn(other, x))[1]


def call_metric(name, cnn, x, attribution, target, key=jax.random.key(0), **overrides):
  entry = saljax.metrics.entry(name)
  extra = {"key": key} if entry.stochastic else {}
  extra.update(overrides)
  if "params" in entry.needs:  # takes the model as a function of its params
    _, params = cnn_as_function_of_params()
    return entry.fn(_params_model(cnn), x, attribution, target, params=params,
                    **{**metric_options(name), **extra})
  if name == "data_randomization":
    extra["random_model"] = _random_label_model(cnn)
  # A metric that reads a layer (relative representation stability) gets the
  # tapped model; the others the plain one.
  model = cnn if "tapped" in entry.needs else cnn.logits
  return entry.fn(model, x, attribution, target, **{**metric_options(name), **extra})
