"""Experiment logs: JSON lines and TensorBoard event files side by side with
``config.json``, and a progress line with rate and ETA. Only process 0
writes (``jax.process_index() == 0``), as in big_vision and the Flax examples.

Layout under a workdir::

    config.json           the resolved config
    metrics.jsonl         one JSON object per `write` call: {"step": ..., "time": ..., name: value}
    tensorboard/          tensorboardX event files (one scalar per metric)
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np
from absl import logging as absl_logging


def is_writer() -> bool:
  """True on the process that writes logs (process 0)."""
  return jax.process_index() == 0


def _scalar(v: Any) -> float | None:
  try:
    a = np.asarray(v)
  except Exception:
    return None
  if a.size != 1 or not np.issubdtype(a.dtype, np.number):
    return None
  return float(a.reshape(()))


def config_to_dict(config: Any) -> Any:
  """A JSON-ready copy of an ml_collections ConfigDict (or plain dict)."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  if isinstance(config, Mapping):
    return {str(k): config_to_dict(v) for k, v in config.items()}
  if isinstance(config, (list, tuple)):
    return [config_to_dict(v) for v in config]
  if isinstance(config, (str, int, float, bool)) or config is None:
    return config
  return repr(config)


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch.

  tensorboardX imports torch at import time only to accept torch tensors,
  which costs seconds where torch is installed (the test extra); scalars
  need none of it, so torch is hidden during that import unless it is
  already loaded.
  """
  import sys

  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None  # makes `import torch` raise ImportError
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """Writes scalars to ``metrics.jsonl`` and TensorBoard; a no-op except on process 0.

  Args:
    workdir: the run's directory (created).
    tensorboard: also write TensorBoard event files (tensorboardX).
    enabled: override the process-0 rule (tests).
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True, enabled: bool | None = None):
    self.workdir = os.fspath(workdir)
    self.enabled = is_writer() if enabled is None else bool(enabled)
    self._tb = None
    self._jsonl = None
    if not self.enabled:
      return
    os.makedirs(self.workdir, exist_ok=True)
    self._jsonl = open(os.path.join(self.workdir, "metrics.jsonl"), "a", buffering=1)
    if tensorboard:
      self._tb = _summary_writer_class()(os.path.join(self.workdir, "tensorboard"))

  def write_config(self, config: Any) -> None:
    """Writes ``config.json`` beside the logs."""
    if not self.enabled:
      return
    with open(os.path.join(self.workdir, "config.json"), "w") as fh:
      json.dump(config_to_dict(config), fh, indent=2, sort_keys=True)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Logs scalar `metrics` at `step` (non-scalars are skipped)."""
    if not self.enabled:
      return
    scalars = {k: s for k, v in metrics.items() if (s := _scalar(v)) is not None}
    record = {"step": int(step), "time": time.time(), **scalars}
    self._jsonl.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, int(step))

  def flush(self) -> None:
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """The records of a ``metrics.jsonl`` file (a torn last line is skipped)."""
  out = []
  with open(path) as fh:
    for line in fh:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return out


def _hms(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  s = int(round(seconds))
  return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
  """A progress line ``name: step/total (pct) rate/s ETA h:mm:ss`` at most every
  `every_seconds`, on process 0 only.

  Args:
    total: the last step.
    name: what is counted (``"train"``, ``"explain"``).
    start: the step the loop starts from (after a resume), for an honest rate.
    every_seconds: minimum time between two lines (0: every update).
    log: where lines go (default absl ``logging.info``).
    clock: the time source (tests).
  """

  def __init__(self, total: int, *, name: str = "progress", start: int = 0,
               every_seconds: float = 10.0, log: Callable[[str], None] | None = None,
               clock: Callable[[], float] = time.monotonic):
    self.total, self.name, self.start = int(total), name, int(start)
    self.every = float(every_seconds)
    self._log = log or absl_logging.info
    self._clock = clock
    self._t0 = clock()
    self._last = -math.inf
    self.enabled = is_writer()

  def line(self, step: int) -> str:
    elapsed = max(self._clock() - self._t0, 1e-9)
    done = step - self.start
    rate = done / elapsed
    eta = (self.total - step) / rate if rate > 0 else math.inf
    pct = 100.0 * step / max(self.total, 1)
    return (f"{self.name}: {step}/{self.total} ({pct:.1f}%) {rate:.3g}/s"
            f" elapsed {_hms(elapsed)} ETA {_hms(eta)}")

  def update(self, step: int, *, force: bool = False) -> str | None:
    """Logs and returns the line when `every_seconds` passed (or `force`)."""
    now = self._clock()
    if not self.enabled or (not force and now - self._last < self.every):
      return None
    self._last = now
    text = self.line(step)
    self._log(text)
    return text
