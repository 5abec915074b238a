"""Quantus twins of the complexity metrics.

saljax scores one value per pixel, ``sum_c |a|`` (its complexity module's
convention); Quantus gets that same map as ``a_batch [B, 1, H, W]`` with
``abs=True`` (a no-op on it) and ``normalise=False`` (its default divides by
the maximum: entropy and the Gini index ignore the scale, and effective
complexity's threshold must stay in the attribution's own units, as saljax's
``eps``). Quantus' numerical guards differ by construction and stay inside the
tolerance on non-degenerate maps: Complexity adds 1e-12 inside the log
(complexity.py:256), Sparseness adds 1e-7 to every value (sparseness.py:260).
"""
from __future__ import annotations

import numpy as np

from experiments._quantus import QuantusTwin


def _magnitudes(a_nchw):
  """[B, C, H, W] -> sum_c |a| as [B, 1, H, W] (saljax's per-pixel magnitude)."""
  return np.abs(np.asarray(a_nchw, np.float32)).sum(1, keepdims=True)


def _quantus_run(cls, net, x_nchw, a_nchw, y, **init):
  import quantus
  metric = getattr(quantus, cls)(abs=True, normalise=False, disable_warnings=True, **init)
  out = metric(model=net, x_batch=np.asarray(x_nchw), y_batch=np.asarray(y),
               a_batch=_magnitudes(a_nchw), device="cpu", channel_first=True, softmax=False)
  return np.asarray(out, np.float64)


def _saljax_run(name, f, x, a, y, **kw):
  import saljax
  return np.asarray(saljax.metrics.get(name)(f, x, a, y, **kw), np.float64)


TWINS = [
    QuantusTwin(
        metric="complexity", quantus="Complexity",
        run_saljax=lambda f, x, a, y: _saljax_run("complexity", f, x, a, y),
        run_quantus=lambda net, x, a, y: _quantus_run("Complexity", net, x, a, y)),
    QuantusTwin(
        metric="sparseness", quantus="Sparseness",
        run_saljax=lambda f, x, a, y: _saljax_run("sparseness", f, x, a, y),
        run_quantus=lambda net, x, a, y: _quantus_run("Sparseness", net, x, a, y)),
    QuantusTwin(
        metric="effective_complexity", quantus="EffectiveComplexity",
        run_saljax=lambda f, x, a, y: _saljax_run("effective_complexity", f, x, a, y, eps=1e-5),
        run_quantus=lambda net, x, a, y: _quantus_run("EffectiveComplexity", net, x, a, y,
                                                      eps=1e-5)),
]
