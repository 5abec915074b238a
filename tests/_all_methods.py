"""Small settings that run every registered explainer and metric on tiny models.

Shared by tests/test_contracts.py and tests/parallel/_sharded_all.py. A method
registered without an entry here makes those tests fail, on purpose: every new
method must join the invariants.
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


def explainer_options(name):
  """(which model: "cnn" or "vit", options)."""
  refs = jax.random.normal(jax.random.key(3), (4,) + SHAPE[1:])
  seg = grid_segments()
  table = {
      "absolute_gradient": {}, "gradient": {}, "gradient_x_input": {},
      "deconvnet": {}, "guided_backprop": {}, "deeplift": {}, "lrp": {},
      "integrated_gradients": {"steps": 4},
      "blur_ig": {"steps": 4, "max_sigma": 2.0},
      "guided_ig": {"steps": 4},
      "smoothgrad": {"samples": 4}, "squaregrad": {"samples": 4}, "vargrad": {"samples": 4},
      "expected_gradients": {"samples": 4, "references": refs},
      "gradient_shap": {"samples": 4, "references": refs},
      "extremal_perturbation": {"iterations": 4, "area": 0.25, "step": 2, "sigma": 3.0,
                                "max_blur": 3.0},
      "hsic": {"grid": 4, "samples": 16},
      "sobol": {"grid": 4, "designs": 4},
      "kernel_shap": {"samples": 16, "segments": seg},
      "lime": {"samples": 16, "segments": seg},
      "shapley_sampling": {"samples": 2, "segments": seg},
      "occlusion": {"window": 4, "stride": 4},
      "rise": {"masks": 16, "cells": 4},
      "gradcam": {"layer": "block2"}, "gradcam_plus_plus": {"layer": "block2"},
      "xgradcam": {"layer": "block2"}, "layercam": {"layer": "block2"},
      "hirescam": {"layer": "block2"}, "eigencam": {"layer": "block2"},
      "scorecam": {"layer": "block2", "batch_size": 3},
      "normgrad": {"layer": "block2"},
      "normgrad_combined": {"layer": ["block1", "block2"]},
      "vit_gradcam": {"layer": "blocks_1"},
      "attention_rollout": {},
      "class_token_attention": {"layer": "blocks_2/attn/probs"},
      "xrai": {"steps": 4, "resize": None, "scales": (50, 100)},
      "lima": {"segments": seg, "pending": 4},
  }
  if name not in table:
    raise KeyError(f"{name}: add small settings for it to tests/_all_methods.py")
  model = "vit" if name in ("vit_gradcam", "attention_rollout", "class_token_attention") else "cnn"
  return model, table[name]


def metric_options(name):
  mask = jnp.zeros(SHAPE[:3], bool).at[:, :8, :8].set(True)
  table = {
      "deletion": {"steps": 8}, "insertion": {"steps": 8}, "pixel_flipping": {"steps": 8},
      "area_between_curves": {"steps": 8},
      "faithfulness_correlation": {"samples": 8, "subset_size": 16},
      "infidelity": {"samples": 4},
      "sensitivity_n": {"samples": 8},
      "road": {"percentages": (0.2, 0.5)},
      "max_sensitivity": {"explainer": saljax.gradient, "samples": 3},
      "local_lipschitz": {"explainer": saljax.gradient, "samples": 3},
      "relative_input_stability": {"explainer": saljax.gradient, "samples": 3},
      "pointing_game": {"mask": mask}, "energy_pointing_game": {"mask": mask},
      "relevance_mass": {"mask": mask}, "relevance_rank": {"mask": mask},
      "top_k_intersection": {"mask": mask}, "attribution_localisation": {"mask": mask},
      "complexity": {}, "effective_complexity": {}, "sparseness": {},
      "class_sensitivity": {"explainer": saljax.gradient},
      "random_logit": {"explainer": saljax.gradient},
      "data_randomization": {"explainer": saljax.gradient},
      "model_parameter_randomization": {"explainer": saljax.gradient},
      "contrastive_class_score": {"contrast": 1, "alphas": (0.2, 0.5)},
      "class_group_contrastivity": {"group": np.array([0, 1]), "alphas": (0.2, 0.5)},
      "pointwise_group_score": {"group": np.array([0, 1]), "alphas": (0.2, 0.5)},
      "contrastive_group_score": {"group": np.array([0]), "contrast_group": np.array([1, 2]),
                                  "alphas": (0.2, 0.5)},
      "roar": {"fraction": 0.3},
      "diffroar": {"fraction": 0.3},
  }
  if name not in table:
    raise KeyError(f"{name}: add small settings for it to tests/_all_methods.py")
  return table[name]


def call_explainer(name, cnn, vit, x, target, key=jax.random.key(0)):
  model, opts = explainer_options(name)
  entry = saljax.explainers.entry(name)
  tapped = cnn if model == "cnn" else vit
  f = tapped if entry.kind == "layer" else tapped.logits
  extra = {"key": key} if entry.stochastic else {}
  return entry.fn(f, x, target, **extra, **opts)


@functools.lru_cache(maxsize=None)
def _params_model(cnn):
  """model_fn(params, x) that also runs `cnn`, so tests can count its traces; one
  function object per `cnn`, so jit caches see the same static argument."""
  model_fn, _ = cnn_as_function_of_params()
  return lambda p, x: (cnn(x), model_fn(p, x))[1]


@functools.lru_cache(maxsize=None)
def _random_label_model(cnn):
  """The tiny CNN with other parameters, standing in for one trained on
  permuted labels; also runs `cnn` so tests count its traces."""
  model_fn, params = cnn_as_function_of_params()
  other = jax.tree_util.tree_map(lambda w: -w[::-1], params)
  return lambda x: (cnn(x), model_fn(other, x))[1]


def call_metric(name, cnn, x, attribution, target, key=jax.random.key(0)):
  entry = saljax.metrics.entry(name)
  extra = {"key": key} if entry.stochastic else {}
  if name == "model_parameter_randomization":  # takes the model as a function of its params
    _, params = cnn_as_function_of_params()
    return entry.fn(_params_model(cnn), x, attribution, target, params=params, **extra,
                    **metric_options(name))
  if name == "data_randomization":
    extra["random_model"] = _random_label_model(cnn)
  return entry.fn(cnn.logits, x, attribution, target, **extra, **metric_options(name))
