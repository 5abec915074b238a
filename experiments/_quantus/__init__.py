"""Quantus twins: each saljax metric beside its Quantus 0.6 counterpart.

One `QuantusTwin` per metric says how to run saljax's metric on a JAX model
(NHWC) and Quantus's metric on the same weights as a torch module (NCHW), on
the same attributions and, where the metric samples, the same random draws.
The parity tests (tests/metrics/test_quantus_*.py) run every twin on a small
CNN and compare; `experiments.benchmark --compare=quantus` times both sides on
the pretrained model. Twins live in one module per metric family
(`faithfulness`, `robustness`, `localization`, ...), each exporting `TWINS`;
`twins()` gathers them.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

# Modules holding twins (one per family); a missing module is an error, not a
# silent gap in the parity tests.
FAMILIES = ("faithfulness", "localization", "complexity", "randomization", "robustness")


@dataclasses.dataclass(frozen=True)
class QuantusTwin:
  """How to run one metric in saljax and in Quantus on the same work.

  Attributes:
    metric: the saljax registry name.
    quantus: the Quantus class name (``quantus.<name>``).
    run_saljax: ``(f, x_nhwc, a_nhwc, y, **ctx) -> [B] numpy scores``.
    run_quantus: ``(net, x_nchw, a_nchw, y, **ctx) -> [B] numpy scores``
      (numpy in, numpy out; `net` a torch module in eval mode).
    context: ``(x_nhwc, y, seed) -> dict`` of extra shared inputs (masks,
      random draws) passed to both runners as keyword arguments; None: none.
    differs: empty when the two agree; otherwise why Quantus differs from the
      paper (naming the line of Quantus 0.6), and the parity test asserts the
      paper's version on a known answer instead.
    evaluations: model evaluations per example of saljax's side (for the
      benchmark's rate): an int, or ``(f, x_nhwc, ctx) -> int`` where the
      count depends on the input's shape or the context (pixel counts,
      patches, segments); `registry_count` builds the usual one, the
      registry's count for the options the twin passes. 0: unknown.
    atol, rtol: the two agree where ``|ours - theirs| <= atol + rtol * |theirs|``
      (numpy's `allclose` rule; the parity tests and the benchmark both use
      `agrees`).
  """
  metric: str
  quantus: str
  run_saljax: Callable[..., Any]
  run_quantus: Callable[..., Any]
  context: Callable[..., dict] | None = None
  differs: str = ""
  evaluations: int | Callable[..., int] = 0
  atol: float = 1e-4
  rtol: float = 0.0

  def agrees(self, ours, theirs) -> bool:
    """Whether saljax's scores `ours` equal Quantus's `theirs` within tolerance."""
    import numpy as np
    return bool(np.allclose(ours, theirs, rtol=self.rtol, atol=self.atol))

  def evals(self, f, x, ctx: dict | None = None) -> int:
    """Model evaluations per example when `run_saljax` runs on model `f`,
    inputs `x` (NHWC) and context `ctx` (see `evaluations`)."""
    if callable(self.evaluations):
      return int(self.evaluations(f, x, dict(ctx or {})))
    return int(self.evaluations)


def registry_count(metric: str, options: dict | Callable[..., dict] | None = None):
  """``(f, x, ctx) -> int``: the registry's count of model evaluations per
  example (`Entry.cost`) for `metric` with the options a twin passes;
  `options` is a dict, or ``(x, ctx) -> dict`` where they depend on the input
  (``steps = H * W``) or on the shared context (segments, sample counts)."""
  def count(f, x, ctx):
    import saljax
    opts = options(x, ctx) if callable(options) else dict(options or {})
    return saljax.metrics.entry(metric).cost(f, x, **opts)
  return count


def twins() -> dict[str, QuantusTwin]:
  """Every twin, by saljax metric name."""
  out: dict[str, QuantusTwin] = {}
  for fam in FAMILIES:
    mod = importlib.import_module(f"experiments._quantus.{fam}")
    for t in mod.TWINS:
      if t.metric in out:
        raise ValueError(f"two Quantus twins for metric {t.metric!r}")
      out[t.metric] = t
  return out
