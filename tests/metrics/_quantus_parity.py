"""Shared pieces of the Quantus parity tests (tests/metrics/test_quantus_*.py)."""
from __future__ import annotations

import inspect
import warnings

import numpy as np


def quantus_metrics(package: str) -> set[str]:
  """Names of the Quantus 0.6 metric classes defined in `quantus.metrics.<package>`
  (aliases that only rename a metric, e.g. ModelParameterRandomisation = MPRT, count
  as their parent)."""
  import importlib
  import quantus
  mod = importlib.import_module(f"quantus.metrics.{package}")
  out = set()
  for name, obj in vars(mod).items():
    if (inspect.isclass(obj) and issubclass(obj, quantus.metrics.base.Metric)
        and obj.__module__.startswith(f"quantus.metrics.{package}.")):
      parent = obj.__mro__[1]
      out.add(parent.__name__ if parent.__module__.startswith(f"quantus.metrics.{package}.")
              else name)
  return out


def quiet(fn, *args, **kwargs):
  """Runs `fn` without Quantus' parameterisation warnings and prints."""
  import contextlib
  import io
  with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
    warnings.simplefilter("ignore")
    return np.asarray(fn(*args, **kwargs), np.float64)
