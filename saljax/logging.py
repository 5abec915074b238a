"""Experiment logs: JSON lines and TensorBoard event files side by side with
each binary's resolved config, and a progress line with rate, ETA and the
latest metrics. Only process 0 writes (``jax.process_index() == 0``), as in
big_vision and the Flax examples.

Layout under a workdir::

    config.<binary>.json    the resolved config of each binary (train, explain, ...)
    metrics.jsonl           train: one JSON object per `write` call: {"step": ..., "time": ..., name: value}
    metrics.<binary>.jsonl  the other binaries' records (rewritten from scratch by every run)
    tensorboard/            tensorboardX event files of train (one scalar per metric)
    logs/<binary>.log       every log line at INFO and above (Orbax, absl), see `console`

``time`` in a record is wall-clock; everything else is a function of the config.
"""
from __future__ import annotations

import contextlib
import json
import logging as py_logging
import math
import os
import sys
import time
import uuid
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
  """Writes scalars to a JSON-lines file and TensorBoard; a no-op except on process 0.

  Args:
    workdir: the run's directory (created).
    tensorboard: also write TensorBoard event files (tensorboardX).
    enabled: override the process-0 rule (tests).
    name: the binary writing; ``"train"`` (or None) writes ``metrics.jsonl``,
      any other name ``metrics.<name>.jsonl``.
    resume_step: the step a resumed run starts from: records after it (what
      a killed run wrote past its last checkpoint, and a torn last line) are
      dropped first, so a resumed run's file holds one record per step and
      kind, like an uninterrupted run's. None: append to what is there.
    fresh: start the file empty (binaries that rewrite every record on a rerun).
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True, enabled: bool | None = None,
               name: str | None = None, resume_step: int | None = None, fresh: bool = False):
    self.workdir = os.fspath(workdir)
    self.enabled = is_writer() if enabled is None else bool(enabled)
    self._tb = None
    self._jsonl = None
    if not self.enabled:
      return
    os.makedirs(self.workdir, exist_ok=True)
    fname = "metrics.jsonl" if name in (None, "train") else f"metrics.{name}.jsonl"
    self.path = os.path.join(self.workdir, fname)
    if fresh:
      _atomic_text(self.path, "")
    elif resume_step is not None and os.path.exists(self.path):
      kept = [r for r in read_jsonl(self.path) if int(r.get("step", 0)) <= int(resume_step)]
      _atomic_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
    self._jsonl = open(self.path, "a", buffering=1)
    if tensorboard:
      # purge_step drops the events a killed run logged past the resumed step.
      kw = {} if resume_step is None else {"purge_step": int(resume_step) + 1}
      self._tb = _summary_writer_class()(os.path.join(self.workdir, "tensorboard"), **kw)

  def write_config(self, config: Any, binary: str) -> None:
    """Writes ``config.<binary>.json`` (atomically) beside the logs: each binary
    keeps its own, so explain's config never overwrites train's."""
    if not self.enabled:
      return
    if not isinstance(binary, str) or not binary.isidentifier():
      raise ValueError(f"binary: expected a name like 'train', got {binary!r}")
    _atomic_text(os.path.join(self.workdir, f"config.{binary}.json"),
                 json.dumps(config_to_dict(config), indent=2, sort_keys=True))

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


def _atomic_text(path: str, text: str) -> None:
  """Writes `path` through a temporary name and a rename (never half written)."""
  d, base = os.path.split(path)
  tmp = os.path.join(d, f".{base}.{uuid.uuid4().hex[:8]}.tmp")
  try:
    with open(tmp, "w") as fh:
      fh.write(text)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


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


def _fmt(v: float) -> str:
  return f"{v:.4g}"


class _Console:
  """One progress line on stderr: rewritten in place on a terminal, one line
  per call otherwise (logs, CI)."""

  def __init__(self, stream=None):
    self._stream = stream
    self._open = False  # a line is shown without its newline (terminal only)

  @property
  def stream(self):
    return self._stream or sys.stderr

  def tty(self) -> bool:
    try:
      return self.stream.isatty()
    except (AttributeError, ValueError):
      return False

  def show(self, text: str) -> None:
    if self.tty():
      self.stream.write("\r\x1b[K" + text)
      self._open = True
    else:
      self.stream.write(text + "\n")
    self.stream.flush()

  def end(self) -> None:
    if self._open:
      self.stream.write("\n")
      self.stream.flush()
      self._open = False


class Progress:
  """A progress line ``name: step/total (pct) rate/s elapsed h:mm:ss ETA h:mm:ss``
  followed by the latest metrics (``loss 0.31 eval_accuracy 0.87``), at most
  every `every_seconds`, on process 0 only.

  By default the line goes to stderr (in place on a terminal, one line per
  update otherwise) and to the INFO log (``logs/<binary>.log``, see `console`).

  Args:
    total: the last step.
    name: what is counted (``"train"``, ``"explain"``).
    start: the step the loop starts from (after a resume), for an honest rate.
    every_seconds: minimum time between two lines (0: every update).
    log: where lines go instead of the console (tests).
    clock: the time source (tests).
  """

  def __init__(self, total: int, *, name: str = "progress", start: int = 0,
               every_seconds: float = 10.0, log: Callable[[str], None] | None = None,
               clock: Callable[[], float] = time.monotonic):
    self.total, self.name, self.start = int(total), name, int(start)
    self.every = float(every_seconds)
    self._console = None if log is not None else _Console()
    self._log = log or self._show
    self._clock = clock
    self._t0 = clock()
    self._last = -math.inf
    self._metrics: dict[str, float] = {}
    self.enabled = is_writer()

  def _show(self, text: str) -> None:
    self._console.show(text)
    absl_logging.info("%s", text)

  def line(self, step: int) -> str:
    elapsed = max(self._clock() - self._t0, 1e-9)
    done = step - self.start
    rate = done / elapsed
    eta = (self.total - step) / rate if rate > 0 else math.inf
    pct = 100.0 * step / max(self.total, 1)
    text = (f"{self.name}: {step}/{self.total} ({pct:.1f}%) {rate:.3g}/s"
            f" elapsed {_hms(elapsed)} ETA {_hms(eta)}")
    if self._metrics:
      text += " " + " ".join(f"{k} {_fmt(v)}" for k, v in self._metrics.items())
    return text

  def update(self, step: int, *, force: bool = False,
             metrics: Mapping[str, Any] | None = None) -> str | None:
    """Logs and returns the line when `every_seconds` passed (or `force`).

    `metrics` (scalars) are remembered, so the latest eval stays on the line
    until the next one replaces it."""
    for k, v in (metrics or {}).items():
      if (x := _scalar(v)) is not None:
        self._metrics[k] = x
    now = self._clock()
    if not self.enabled or (not force and now - self._last < self.every):
      return None
    self._last = now
    text = self.line(step)
    self._log(text)
    return text

  def close(self) -> None:
    """Ends an in-place line with a newline."""
    if self._console is not None:
      self._console.end()


@contextlib.contextmanager
def console(workdir: str, binary: str):
  """What a binary shows while it runs: warnings and its `Progress` line on the
  console; every INFO line (Orbax's checkpoint chatter, absl) in
  ``<workdir>/logs/<binary>.log`` instead (appended; process 0 only for the file).
  """
  from absl import logging as absl_log

  root = py_logging.getLogger()
  handler = absl_log.get_absl_handler()
  old_level, old_root = handler.level, root.level
  file_handler = None
  # Quiet first: is_writer() starts JAX's backends, which log at INFO.
  handler.setLevel(py_logging.WARNING)
  if is_writer():
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    file_handler = py_logging.FileHandler(os.path.join(workdir, "logs", f"{binary}.log"))
    file_handler.setFormatter(py_logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d] %(message)s"))
    file_handler.setLevel(py_logging.INFO)
    root.addHandler(file_handler)
  if root.level > py_logging.INFO or root.level == py_logging.NOTSET:
    root.setLevel(py_logging.INFO)
  absl_log.set_verbosity(absl_log.INFO)
  try:
    yield
  finally:
    handler.setLevel(old_level)
    root.setLevel(old_root)
    if file_handler is not None:
      root.removeHandler(file_handler)
      file_handler.close()
