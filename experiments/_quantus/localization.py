"""Quantus twins of the localization metrics.

Both sides score the same map: the signed channel sum of the attribution
(saljax's `feature_map`), handed to Quantus as ``a_batch [B, 1, H, W]`` with
``abs=False, normalise=False`` (Quantus' ``normalise=True`` divides each map by
its maximum: ranks and ratios ignore that scale, and a per-map scale could
only add rounding). The ground truth is a boolean ``mask [B, H, W]`` (Quantus
``s_batch [B, 1, H, W]``); Focus reads ``quadrants [B, 4]`` (Quantus
``custom_batch``) instead.

Where Quantus 0.6 computes something other than saljax's documented metric,
the twin's `differs` names the Quantus line, the runners still compute each
side's own number, and the parity test compares them on inputs where the two
definitions coincide (and checks saljax's own version on a known answer).
"""
from __future__ import annotations

import numpy as np

from experiments._quantus import QuantusTwin

_QUANTUS = "quantus/metrics/localisation"


def _map(a_nchw):
  """[B, C, H, W] -> the signed channel sum [B, 1, H, W] (saljax's feature map)."""
  a = np.asarray(a_nchw, np.float32)
  return a.sum(1, keepdims=True) if a.ndim == 4 else a[:, None]


def _context(x_nhwc, y, seed):
  """A random ground-truth rectangle per example (at least one pixel in, one out)."""
  b, h, w = np.shape(x_nhwc)[:3]
  rng = np.random.default_rng(seed)
  mask = np.zeros((b, h, w), bool)
  for i in range(b):  # host-side test data
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    mask[i, y0:y0 + rng.integers(2, h // 2 + 1), x0:x0 + rng.integers(2, w // 2 + 1)] = True
  return {"mask": mask}


def _mosaic_context(x_nhwc, y, seed):
  """Two random quadrants per example marked as the target class."""
  b = np.shape(x_nhwc)[0]
  rng = np.random.default_rng(seed)
  q = np.zeros((b, 4), bool)
  for i in range(b):
    q[i, rng.choice(4, 2, replace=False)] = True
  return {"quadrants": q}


def _quantus_run(cls, net, x_nchw, a_nchw, y, mask=None, *, init=None, call=None):
  import quantus
  metric = getattr(quantus, cls)(abs=False, normalise=False, disable_warnings=True,
                                 **(init or {}))
  s = None if mask is None else np.asarray(mask, np.float32)[:, None]
  out = metric(model=net, x_batch=np.asarray(x_nchw), y_batch=np.asarray(y), a_batch=_map(a_nchw),
               s_batch=s, device="cpu", channel_first=True, softmax=False, **(call or {}))
  return np.asarray(out, np.float64)


def _saljax_run(name, f, x, a, y, **kw):
  import saljax
  return np.asarray(saljax.metrics.get(name)(f, x, a, y, **kw), np.float64)


TWINS = [
    QuantusTwin(
        metric="auc", quantus="AUC",
        run_saljax=lambda f, x, a, y, mask: _saljax_run("auc", f, x, a, y, mask=mask),
        run_quantus=lambda net, x, a, y, mask: _quantus_run("AUC", net, x, a, y, mask),
        context=_context),
    QuantusTwin(
        metric="pointing_game", quantus="PointingGame",
        # Quantus has no distance tolerance (the paper's 15 pixels): saljax's
        # tolerance=0 is its pixel-exact game. Quantus also scores a hit when
        # ANY tied maximum is inside (pointing_game.py:287-290) where saljax
        # points at one pixel; the parity maps have a unique maximum.
        run_saljax=lambda f, x, a, y, mask: _saljax_run("pointing_game", f, x, a, y, mask=mask,
                                                        tolerance=0),
        run_quantus=lambda net, x, a, y, mask: _quantus_run("PointingGame", net, x, a, y, mask),
        context=_context),
    QuantusTwin(
        metric="attribution_localisation", quantus="AttributionLocalisation",
        # Quantus' positive_attributions=True is saljax's positive relevance.
        # Unweighted only: see `differs`.
        run_saljax=lambda f, x, a, y, mask: _saljax_run("attribution_localisation", f, x, a, y,
                                                        mask=mask),
        run_quantus=lambda net, x, a, y, mask: _quantus_run(
            "AttributionLocalisation", net, x, a, y, mask,
            init={"positive_attributions": True, "weighted": False}),
        context=_context,
        differs=(f"weighted=True only: {_QUANTUS}/attribution_localisation.py:311 takes the"
                 " data size as `x_batch[2:].size` (the batch from row 2 on, not one image) and"
                 " line 330 MULTIPLIES the ratio by the object's area fraction; Kohlbrenner et"
                 " al. 2020 divide (mu_w = mu * S_tot / S_in, 1 = chance). The unweighted"
                 " ratio agrees.")),
    QuantusTwin(
        metric="relevance_mass", quantus="RelevanceMassAccuracy",
        run_saljax=lambda f, x, a, y, mask: _saljax_run("relevance_mass", f, x, a, y, mask=mask),
        run_quantus=lambda net, x, a, y, mask: _quantus_run("RelevanceMassAccuracy", net, x, a,
                                                            y, mask),
        context=_context,
        differs=(f"signed maps: {_QUANTUS}/relevance_mass_accuracy.py:279-280 sums signed"
                 " relevance (negative relevance outside the mask raises the score, a negative"
                 " total gives ratios outside [0, 1]); saljax sums positive relevance, as"
                 " energy_pointing_game (Score-CAM). They agree on non-negative maps.")),
    QuantusTwin(
        metric="relevance_rank", quantus="RelevanceRankAccuracy",
        run_saljax=lambda f, x, a, y, mask: _saljax_run("relevance_rank", f, x, a, y, mask=mask),
        run_quantus=lambda net, x, a, y, mask: _quantus_run("RelevanceRankAccuracy", net, x, a,
                                                            y, mask),
        context=_context),
    QuantusTwin(
        metric="top_k_intersection", quantus="TopKIntersection",
        # k = 10 (Quantus' default 1000 exceeds the 64 pixels of the parity maps).
        run_saljax=lambda f, x, a, y, mask: _saljax_run("top_k_intersection", f, x, a, y,
                                                        mask=mask, k=10),
        run_quantus=lambda net, x, a, y, mask: _quantus_run("TopKIntersection", net, x, a, y,
                                                            mask, init={"k": 10}),
        context=_context),
    QuantusTwin(
        metric="focus", quantus="Focus",
        run_saljax=lambda f, x, a, y, quadrants: _saljax_run("focus", f, x, a, y,
                                                             quadrants=quadrants),
        run_quantus=lambda net, x, a, y, quadrants: _quantus_run(
            "Focus", net, x, a, y, call={"custom_batch": np.asarray(quadrants, np.float32)}),
        context=_mosaic_context),
]
