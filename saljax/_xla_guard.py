"""A guard against a miscompilation in XLA:CPU's YNNPACK reduction fusion.

jaxlib 0.10.2's CPU backend sends reductions to YNNPACK fusions by default,
and one pattern at the heart of this library comes back wrong: the sum over
a vmapped chunk of ``weight * gradient`` when the gradient does not change
along the chunk (integrated gradients of a model that is linear in its input,
at 7 or 50 steps, returned values of 1e24 to 1e30, different on each run;
the same program with YNN reductions off is exact). A wrong answer with exit
status 0 is the worst failure of an attribution library, so saljax turns that
fusion off (``--xla_cpu_experimental_ynn_fusion_type=-reduce``, the
workaround reported upstream for YNN reduction regressions) unless the user
has set the option. XLA reads its flags when the first backend starts: after
that the guard can only warn (`apply` returns why). tests/test_xla_guard.py
runs the reproducer in a fresh process.
"""
from __future__ import annotations

import os
import warnings

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-reduce"
OPTION = "xla_cpu_experimental_ynn_fusion_type"
# The first jaxlib known to have the option (an unknown option in XLA_FLAGS
# aborts the process, so older versions are left alone).
FIRST = (0, 10, 2)


def _version(v: str) -> tuple[int, ...]:
  out = []
  for part in v.split(".")[:3]:
    digits = "".join(ch for ch in part if ch.isdigit())
    out.append(int(digits) if digits else 0)
  return tuple(out)


def apply() -> str:
  """Adds `FLAG` to ``XLA_FLAGS`` when it can and should; returns what it did
  (``"set"``, ``"user"``: the user chose, ``"old"``: jaxlib predates the
  option, ``"late"``: a backend already started, and a warning was issued)."""
  flags = os.environ.get("XLA_FLAGS", "")
  if OPTION in flags:
    return "user"
  try:
    import jaxlib
    version = _version(jaxlib.__version__)
  except Exception:  # no jaxlib version to read: do not touch the flags
    return "old"
  if version < FIRST:
    return "old"
  from jax._src import xla_bridge
  if xla_bridge.backends_are_initialized():
    warnings.warn(
        "saljax was imported after JAX started its backends, so it could not turn off"
        " XLA:CPU's YNNPACK reduction fusion, which miscomputes sums of gradients in this"
        f" jaxlib (integrated gradients can be wrong on CPU). Set XLA_FLAGS={FLAG!r} before"
        " starting Python, or import saljax before running any JAX computation.",
        RuntimeWarning, stacklevel=3)
    return "late"
  os.environ["XLA_FLAGS"] = (flags + " " + FLAG).strip()
  return "set"


STATUS = apply()
