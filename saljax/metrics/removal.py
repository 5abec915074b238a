"""ROAR and DiffROAR: masking by attribution and the accuracy scores.

ROAR (Hooker, Erhan, Kindermans, Kim 2019, "A Benchmark for Interpretability
Methods in Deep Neural Networks", NeurIPS, arXiv:1806.10758) removes the
fraction of features an attribution ranks highest, RETRAINS a model on the
masked training set and reports its test accuracy on the masked test set.
DiffROAR (Shah, Jain, Netrapalli 2021, "Do Input Gradients Highlight
Discriminative Features?", NeurIPS, arXiv:2102.12781) keeps the top-k or the
bottom-k fraction instead and reports
``DiffROAR(k) = acc(top-k kept) - acc(bottom-k kept)`` (> 0 supports the
attribution, a random one gives 0 in expectation).

Retraining belongs to the experiments (a training loop); this module gives
the two pieces it needs, compiled and batched:
- `remove_by_attribution`: the masked inputs for a fraction (traced, so one
  compile serves every fraction);
- `roar` and `diffroar`: per-example scores of given (retrained) models on
  masked inputs, ``[B]``; their batch mean is the accuracy or DiffROAR.

Ranking: ``|a|`` (``absolute=True``, Shah et al. rank input-gradient
magnitudes; the default) or the signed value, per pixel (channel sum) or per
coordinate (``per_coordinate=True``, as Shah et al.'s code, which sorts the
flattened tensor); ties by index, or at random with a key.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from saljax import _validation as V
from saljax import model as M
from saljax import removal as R
from saljax.metrics import _common as C
from saljax.metrics._registry import REGISTRY

Array = jax.Array

REMOVE = ("top", "bottom")


def _relevance(attribution, x, absolute, per_coordinate):
  a = jnp.abs(attribution) if absolute else attribution
  if per_coordinate:
    if a.shape != x.shape:
      a = C.expand(a, x)
    return a
  return C.feature_map(a, x)


@functools.partial(jax.jit, static_argnames=("remove", "absolute", "per_coordinate"))
def _remove(x, attribution, fraction, fill, key, remove, absolute, per_coordinate):
  rel = _relevance(attribution, x, absolute, per_coordinate)
  rank = C.ranks(rel, key, descending=(remove == "top"))
  n = rel[0].size
  count = jnp.floor(fraction * n + 1e-6).astype(jnp.int32)
  gone = rank < count
  if not per_coordinate:
    gone = C.expand(gone, x)
  return jnp.where(gone, fill, x)


def _check(x, attribution, fraction, remove, fill, key, method, blur_sigma: float = 5.0):
  x = V.check_input(x)
  attribution = C.check_attribution(attribution, x)
  fraction = C.check_fraction(fraction, "fraction")
  V.check_choice(remove, "remove", REMOVE)
  fill = C.make_fill(x, fill, blur_sigma=blur_sigma)
  key = C.check_key(key, method, required=False)
  return x, attribution, fraction, fill, key


def remove_by_attribution(x, attribution, fraction: float, *, remove: str = "top",
                          fill: Any = "zeros", absolute: bool = True,
                          per_coordinate: bool = False, key=None, removal: Any = None) -> Array:
  """`x` with ``floor(fraction * N)`` features replaced by `fill`.

  Args:
    x: inputs ``[B, ...]``.
    attribution: shaped like `x`, or ``[B, H, W]`` for NHWC images.
    fraction: share of the N features removed (pixels, or coordinates with
      `per_coordinate`), in [0, 1]; traced.
    remove: ``"top"`` removes the highest-ranked (ROAR), ``"bottom"`` the
      lowest. DiffROAR's "keep top-k" is ``remove="bottom", fraction=1 - k``.
    fill: ``"zeros"`` (default: the mean for standardized inputs, as Shah et
      al.'s code fills the training mean), ``"mean"`` (each image's channel
      means; Hooker et al. fill the dataset's channel means: pass that as an
      array), ``"blur"``, a float or an array.
    absolute, per_coordinate: ranking (module docstring).
    key: optional, breaks ties at random.
    removal: None (default: `fill` decides) or a pixel `saljax.removal.Removal`
      (or its kind's name ``"constant"``/``"blur"``/``"mean"``) replacing
      `fill`: the removal applied to the data ROAR/DiffROAR retrain on. The
      model kinds act inside a model, so they are refused here (`roar` and
      `diffroar` take them at test time).
  """
  rem = R.as_removal(removal)
  if rem is not None and rem.needs_model:
    raise ValueError(f"remove_by_attribution: removal={rem.kind!r} happens inside the model's"
                     " forward, not in the data; pass it to roar/diffroar (test time), or use a"
                     " pixel strategy ('constant', 'blur', 'mean') here")
  sigma = 5.0  # make_fill's default for fill="blur"
  if rem is not None:
    fill = rem.fill()
    if rem.kind == "blur" and rem.blur_sigma is not None:  # the Removal's own sigma
      sigma = float(rem.blur_sigma)
  x, attribution, fraction, fill, key = _check(x, attribution, fraction, remove, fill, key,
                                               "remove_by_attribution", sigma)
  return _remove(x, attribution, jnp.float32(fraction), fill, key, remove, bool(absolute),
                 bool(per_coordinate))


@M.jit(static_argnames=())
def _correct(f, x, target):
  return (jnp.argmax(f(x), -1) == target).astype(jnp.float32)


@REGISTRY.register("roar", family="removal", returns="scores", evaluations=1, backward=False,
    smoke={"fraction": 0.3}, direction=lambda o: "lower" if o["remove"] == "top" else "higher")
def roar(f, x, attribution, target, *, key=None, fraction: float = 0.5, remove: str = "top",
         fill: Any = "zeros", absolute: bool = True, per_coordinate: bool = False,
         removal: Any = None):
  """ROAR score of a (retrained) model (Hooker et al. 2019, arXiv:1806.10758):
  1.0 where ``f`` still predicts `target` (the true label) on `x` with
  `fraction` of its features removed by `remove_by_attribution`, else 0.0.
  The batch mean is ROAR's test accuracy at that fraction; `f` should be the
  model retrained on the training set masked the same way (passing the
  original model gives the no-retraining variant). Defaults: half the
  pixels removed (Hooker et al. sweep 10%..90%).

  ``removal``: None (default: `fill` decides), a `saljax.removal.Removal` or
  a kind's name: ``"constant"``/``"blur"``/``"mean"`` replace `fill`;
  ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the model's
  mask-aware forward with the removed pixels marked (`saljax.removal`; NHWC
  images, per pixel: not with `per_coordinate`).

  Returns:
    ``[B]``.
  """
  fill, _, keep_model = R.resolve(removal, f, fill, 5.0, "roar")
  f, x, target = C.prepare_model(f, x, target)
  if keep_model is None:
    # A pixel Removal goes down as itself, so its blur_sigma is kept.
    masked = remove_by_attribution(x, attribution, fraction, remove=remove, fill=fill,
                                   absolute=absolute, per_coordinate=per_coordinate, key=key,
                                   removal=removal)
    return _correct(f, masked, target)
  if per_coordinate:
    raise ValueError("roar: removal='token_drop'/'layer_mask' removes whole pixels; use"
                     " per_coordinate=False")
  masked = _remove_marked(x, attribution, fraction, remove, fill, absolute, key, "roar")
  return _correct(keep_model, masked, target)


def _remove_marked(x, attribution, fraction, remove, fill, absolute, key, method):
  """`remove_by_attribution` per pixel on `x` with a keep channel
  (`saljax.removal.augment`), for a model kind's `KeepChannel` model."""
  x, attribution, fraction, fillv, key = _check(x, attribution, fraction, remove, fill, key, method)
  # The keep channel (1 kept, 0 removed) is removed with the pixels; ranking by
  # the channel-summed relevance equals `_relevance`'s for pixels.
  rel = _relevance(attribution, x, bool(absolute), False)
  xa, fa, _ = R.augment(x, fillv, None, method)
  return _remove(xa, rel, jnp.float32(fraction), fa, key, remove, False, False)


@REGISTRY.register("diffroar", family="removal", returns="scores", evaluations=2, backward=False,
    smoke={"fraction": 0.3}, direction="higher")
def diffroar(f, x, attribution, target, *, key=None, fraction: float = 0.5, f_bottom=None,
             fill: Any = "zeros", absolute: bool = True, per_coordinate: bool = False,
             removal: Any = None):
  """DiffROAR per example (Shah, Jain, Netrapalli 2021, arXiv:2102.12781):
  ``correct(f, x top-k kept) - correct(f_bottom, x bottom-k kept)`` with
  ``k = fraction`` the share KEPT. `f` is the model retrained on top-k-kept
  data and `f_bottom` the one retrained on bottom-k-kept data (None: `f` for
  both, the no-retraining variant). The batch mean is DiffROAR(k) in [-1, 1];
  positive supports the attribution.

  ``removal``: as in `roar`; a model kind needs the mask-aware forward of
  both `f` and `f_bottom`.

  Returns:
    ``[B]`` in {-1, 0, 1}.
  """
  fill, _, keep_top = R.resolve(removal, f, fill, 5.0, "diffroar")
  keep_bot = keep_top
  if keep_top is not None and f_bottom is not None:
    keep_bot = R.resolve(removal, f_bottom, fill, 5.0, "diffroar (f_bottom)")[2]
  f_top, x, target = C.prepare_model(f, x, target)
  f_bot = f_top if f_bottom is None else M.as_model(f_bottom)
  if f_bottom is not None:
    M.output_shape(f_bot, x)
  k = C.check_fraction(fraction, "fraction")
  if keep_top is not None:
    if per_coordinate:
      raise ValueError("diffroar: removal='token_drop'/'layer_mask' removes whole pixels; use"
                       " per_coordinate=False")
    top_kept = _remove_marked(x, attribution, 1.0 - k, "bottom", fill, absolute, key, "diffroar")
    bottom_kept = _remove_marked(x, attribution, 1.0 - k, "top", fill, absolute, key, "diffroar")
    return _correct(keep_top, top_kept, target) - _correct(keep_bot, bottom_kept, target)
  kw = dict(fill=fill, absolute=absolute, per_coordinate=per_coordinate, key=key,
            removal=removal)  # a pixel Removal keeps its blur_sigma
  top_kept = remove_by_attribution(x, attribution, 1.0 - k, remove="bottom", **kw)
  bottom_kept = remove_by_attribution(x, attribution, 1.0 - k, remove="top", **kw)
  return _correct(f_top, top_kept, target) - _correct(f_bot, bottom_kept, target)
