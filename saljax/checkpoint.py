"""Checkpoints with Orbax: keep the last N, keep the best by a metric, resume
from the latest, refuse a checkpoint written by another model.

Two Orbax `CheckpointManager`s share a directory: ``<dir>/latest`` keeps the
last `max_to_keep` steps (what a restart resumes from) and ``<dir>/best``
keeps the single best step by `best_metric` (so "best" never evicts the step
a restart needs). Each step stores the state pytree and a small JSON
``meta`` (the model's fingerprint and the step's metrics).

Orbax writes a step into a temporary directory and renames it when complete,
and lists only complete steps, so a run killed while writing leaves nothing
that a restart could read as good. Only the writer (``read_only=False``)
removes stale temporary directories at start-up: a reader (explain) opened on a
run that is still training must not delete the trainer's step in progress.

Orbax does not check what it reads back, so flipped bits or overwritten bytes
come back as NaN or garbage weights. Each finalized step therefore gets a
digest (``saljax_digest.json``: the SHA-256 of every file of the step, written
to a temporary name and renamed). Restoring verifies it; a step whose files do
not match is refused with a warning naming the step directory and the file, and
the newest intact step is used instead (a writer also moves the bad step aside
to ``<step>.corrupt-<time>``, so that training can write that step again).
A step without a digest (written before digests existed, or killed between
Orbax's finalize and the digest write) is used with a warning.

``latest`` is committed before ``best``, so a kill between them leaves ``best``
stale; `repair_best` (called by the trainer on resume) re-saves ``best`` from
the best intact step of ``latest`` when that one is better.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging

CKPT_META_VERSION = 1
DIGEST_FILE = "saljax_digest.json"
DIGEST_VERSION = 1


class CorruptCheckpointError(ValueError):
  """No intact checkpoint: every candidate step failed its digest check."""


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as fh:
    for chunk in iter(lambda: fh.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def file_digests(step_dir: str) -> dict[str, str]:
  """``{relative path: sha256}`` of every file under `step_dir` but the digest itself."""
  out = {}
  for root, dirs, files in os.walk(step_dir):
    dirs.sort()
    for f in sorted(files):
      if DIGEST_FILE in f:  # the digest and its temporary names
        continue
      path = os.path.join(root, f)
      out[os.path.relpath(path, step_dir)] = _sha256(path)
  return out


def write_digest(step_dir: str) -> None:
  """Writes ``<step_dir>/saljax_digest.json`` atomically (temporary name, fsync, rename)."""
  record = {"version": DIGEST_VERSION, "files": file_digests(step_dir)}
  path = os.path.join(step_dir, DIGEST_FILE)
  tmp = os.path.join(step_dir, f".{DIGEST_FILE}.{uuid.uuid4().hex[:8]}.tmp")
  try:
    with open(tmp, "w") as fh:
      json.dump(record, fh, indent=1, sort_keys=True)
      fh.flush()
      os.fsync(fh.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def verify_digest(step_dir: str) -> str | None:
  """What is wrong with `step_dir` by its digest (None: intact).

  Returns ``"no digest"`` when the step has none (not verifiable)."""
  path = os.path.join(step_dir, DIGEST_FILE)
  if not os.path.exists(path):
    return "no digest"
  try:
    with open(path) as fh:
      want = json.load(fh)["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"its digest {path} is unreadable ({type(e).__name__}: {e})"
  if not want:
    return f"its digest {path} lists no files"
  for rel in sorted(want):
    f = os.path.join(step_dir, rel)
    if not os.path.isfile(f):
      return f"file {f} is missing (listed in {DIGEST_FILE})"
    got = _sha256(f)
    if got != want[rel]:
      return (f"file {f} is corrupt: expected SHA-256 {want[rel][:16]}... (from {DIGEST_FILE}),"
              f" got {got[:16]}...")
  return None


def fingerprint(model_name: str, state: Any) -> dict[str, Any]:
  """What identifies a model's checkpoint: its name and every leaf's path and shape."""
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  shapes = {jax.tree_util.keystr(p): list(np.shape(v)) for p, v in leaves}
  return {"model": str(model_name), "shapes": shapes, "version": CKPT_META_VERSION}


def _describe_mismatch(want: Mapping[str, Any], got: Mapping[str, Any]) -> str:
  if want.get("model") != got.get("model"):
    return f"it was written by model {got.get('model')!r}, this run builds {want.get('model')!r}"
  ws, gs = want.get("shapes", {}), got.get("shapes", {})
  missing = sorted(set(ws) - set(gs))[:5]
  extra = sorted(set(gs) - set(ws))[:5]
  diff = [f"{k}: checkpoint {gs[k]} vs model {ws[k]}" for k in sorted(set(ws) & set(gs))
          if list(ws[k]) != list(gs[k])][:5]
  parts = []
  if missing:
    parts.append(f"leaves missing from the checkpoint {missing}")
  if extra:
    parts.append(f"leaves the model does not have {extra}")
  if diff:
    parts.append(f"shapes differ {diff}")
  return "; ".join(parts) or "the fingerprints differ"


class CheckpointManager:
  """Keep-last-N and keep-best checkpoints of one training run.

  Args:
    directory: where checkpoints go (created unless `read_only`).
    fingerprint: `fingerprint(model_name, state)` of the model of this run;
      restoring a checkpoint with another fingerprint raises ValueError.
    max_to_keep: how many recent steps to keep (default 3).
    best_metric: name of the metric that picks the best step (None: no best).
    best_mode: ``"max"`` (default) or ``"min"``.
    async_save: write in the background (Orbax's default); `wait` blocks.
    read_only: a reader (explain, evaluate): never removes temporary
      directories (they may be a live trainer's step in progress), never
      moves a corrupt step aside, and refuses `save`.
  """

  def __init__(self, directory: str, *, fingerprint: Mapping[str, Any], max_to_keep: int = 3,
               best_metric: str | None = None, best_mode: str = "max", async_save: bool = True,
               read_only: bool = False):
    import orbax.checkpoint as ocp

    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode: expected 'max' or 'min', got {best_mode!r}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.fingerprint = dict(fingerprint)
    self.best_metric = best_metric
    self.best_mode = best_mode
    self.read_only = bool(read_only)
    self._ocp = ocp
    self._pending: list[tuple[Any, int]] = []  # saved steps still waiting for their digest
    # Only the writer owns the temporary directories: a reader cleaning up
    # would delete the step a running trainer is writing.
    opts = dict(create=not read_only, cleanup_tmp_directories=not read_only,
                enable_async_checkpointing=async_save)
    self._latest = ocp.CheckpointManager(
        os.path.join(self.directory, "latest"),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, **opts))
    self._best = None
    if best_metric is not None:
      self._best = ocp.CheckpointManager(
          os.path.join(self.directory, "best"),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1, best_fn=lambda m: float(m[best_metric]), best_mode=best_mode,
              keep_checkpoints_without_metrics=False, **opts))

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def best_step(self) -> int | None:
    return None if self._best is None else self._best.best_step()

  def all_steps(self) -> list[int]:
    return list(self._latest.all_steps())

  def _args(self, state, metrics):
    ocp = self._ocp
    meta = {"fingerprint": self.fingerprint,
            "metrics": {k: float(v) for k, v in (metrics or {}).items()}}
    return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

  @staticmethod
  def _step_dir(mgr, step: int) -> str:
    return os.path.join(os.fspath(mgr.directory), str(int(step)))

  def _finish_digests(self) -> None:
    """Waits for the background writes, then digests the steps they finalized."""
    self._latest.wait_until_finished()
    if self._best is not None:
      self._best.wait_until_finished()
    pending, self._pending = self._pending, []
    if jax.process_index() != 0:  # one writer of the shared files
      return
    for mgr, step in pending:
      d = self._step_dir(mgr, step)
      if os.path.isdir(d):  # gone when max_to_keep (or best) already dropped it
        write_digest(d)

  def save(self, step: int, state: Any, *, metrics: Mapping[str, float] | None = None,
           force: bool = False) -> None:
    """Saves `state` at `step` (and as the best one when `metrics` has `best_metric`)."""
    if self.read_only:
      raise ValueError(f"checkpoints {self.directory}: opened read_only, cannot save step {step}")
    # Orbax waits for the previous save here anyway; finishing it first lets
    # its digest be written now that its files are final.
    self._finish_digests()
    self._latest.save(int(step), args=self._args(state, metrics), force=force)
    self._pending.append((self._latest, int(step)))
    if self._best is not None and metrics and self.best_metric in metrics:
      # Already there when a resume fell back past a corrupt step and redid it.
      if int(step) not in self._best.all_steps():
        m = {k: float(v) for k, v in metrics.items()}
        self._best.save(int(step), args=self._args(state, metrics), metrics=m, force=True)
        self._pending.append((self._best, int(step)))
    if not self._latest._options.enable_async_checkpointing:
      self._finish_digests()

  def _read_meta(self, mgr, step: int) -> dict[str, Any]:
    try:
      return mgr.restore(step, args=self._ocp.args.Composite(meta=self._ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # a truncated Orbax metadata file: JSONDecodeError, KeyError, ...
      raise CorruptCheckpointError(
          f"checkpoint {self._step_dir(mgr, step)}: its metadata cannot be read"
          f" ({type(e).__name__}: {e})") from e

  def _set_aside(self, mgr, step: int) -> None:
    """The writer moves a bad step aside (kept for inspection) so training can
    write this step again; Orbax ignores names that are not a step."""
    if self.read_only or jax.process_index() != 0:
      return
    d = self._step_dir(mgr, step)
    aside = f"{d}.corrupt-{int(time.time())}"
    os.replace(d, aside)
    logging.warning("moved corrupt checkpoint %s to %s", d, aside)
    mgr.reload()

  def _restore_state(self, mgr, step: int, target: Any) -> Any:
    abstract = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) if not hasattr(a, "sharding")
        else jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), target)
    try:
      out = mgr.restore(step, args=self._ocp.args.Composite(state=self._ocp.args.StandardRestore(abstract)))
    except Exception as e:  # unverified step whose Orbax files are damaged
      raise CorruptCheckpointError(
          f"checkpoint {self._step_dir(mgr, step)}: its state cannot be read"
          f" ({type(e).__name__}: {str(e)[:300]})") from e
    return out["state"]

  def check(self, step: int | None = None, *, best: bool = False) -> dict[str, Any]:
    """Reads the meta of `step` (latest by default) and raises if its fingerprint differs."""
    mgr = self._best if best else self._latest
    if mgr is None:
      raise ValueError("best: this manager keeps no best checkpoint (best_metric=None)")
    step = (mgr.best_step() if best else mgr.latest_step()) if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {mgr.directory}")
    meta = self._read_meta(mgr, step)
    got = meta.get("fingerprint", {})
    if got != self.fingerprint:
      raise ValueError(
          f"checkpoint {mgr.directory}/{step} does not fit this model: "
          f"{_describe_mismatch(self.fingerprint, got)}. Use another workdir or the matching config.")
    return meta

  def _verify(self, mgr, step: int) -> str | None:
    """The problem of `step` by its digest (None: intact or merely unverifiable, with a warning)."""
    d = self._step_dir(mgr, step)
    problem = verify_digest(d)
    if problem == "no digest":
      logging.warning("checkpoint %s has no %s (written before digests, or killed before"
                      " its digest was written): restoring it unverified", d, DIGEST_FILE)
      return None
    if problem is not None:
      logging.warning("checkpoint %s is corrupt, refusing it: %s", d, problem)
      self._set_aside(mgr, step)
    return problem

  def _better(self, a: float, b: float) -> bool:
    return a > b if self.best_mode == "max" else a < b

  def _best_of_latest(self, problems: list[str]) -> tuple[int, dict] | None:
    """The intact step of ``latest`` with the best `best_metric`, with its meta."""
    found = None
    for s in sorted(self._latest.all_steps(), reverse=True):
      bad = self._verify(self._latest, s)
      if bad is not None:
        problems.append(f"{self._step_dir(self._latest, s)}: {bad}")
        continue
      try:
        meta = self.check(s)
      except CorruptCheckpointError as e:
        problems.append(str(e))
        continue
      v = meta.get("metrics", {}).get(self.best_metric)
      if v is not None and (found is None or self._better(float(v), found[2])):
        found = (s, meta, float(v))
    return None if found is None else found[:2]

  def restore(self, target: Any, step: int | None = None, *, best: bool = False) -> tuple[int, Any, dict]:
    """Restores `step` (default latest, or the best with ``best=True``) into the
    structure of `target`; returns ``(step, state, metrics)``.

    Each candidate is checked against its digest first. Without `step`, a
    corrupt latest step falls back to the newest intact one (a corrupt best to
    the intact step of ``latest`` best by `best_metric`), with a warning.

    Raises:
      FileNotFoundError: no complete checkpoint.
      CorruptCheckpointError: `step`, or every candidate, fails its digest.
      ValueError: the checkpoint was written by another model.
    """
    mgr = self._best if best else self._latest
    if mgr is None:
      raise ValueError("best: this manager keeps no best checkpoint (best_metric=None)")
    problems: list[str] = []
    if step is not None:
      bad = self._verify(mgr, step)
      if bad is not None:
        raise CorruptCheckpointError(f"checkpoint {self._step_dir(mgr, step)}: {bad}")
      meta = self.check(step, best=best)
      return int(step), self._restore_state(mgr, int(step), target), meta.get("metrics", {})
    steps = sorted(mgr.all_steps(), reverse=True)
    if best:
      steps = [s for s in [mgr.best_step()] if s is not None]
    if not steps and not (best and self._latest.all_steps()):
      raise FileNotFoundError(f"no complete checkpoint in {mgr.directory}")
    def attempt(m, s, is_best):
      bad = self._verify(m, s)
      if bad is not None:
        problems.append(f"{self._step_dir(m, s)}: {bad}")
        return None
      try:
        # A step without a digest is only checked by reading it: damaged
        # Orbax metadata or state is refused by name like a failed digest.
        meta = self.check(s, best=is_best)
        state = self._restore_state(m, s, target)
      except CorruptCheckpointError as e:
        logging.warning("%s: refusing it", e)
        problems.append(str(e))
        self._set_aside(m, s)
        return None
      if problems:
        logging.warning("restoring step %d from %s instead", s, m.directory)
      return int(s), state, meta.get("metrics", {})

    for s in steps:
      if (out := attempt(mgr, s, best)) is not None:
        return out
    if best:
      found = self._best_of_latest(problems)
      if found is not None:
        logging.warning("no intact best checkpoint in %s: using step %d of %s, the best intact"
                        " one by %s", mgr.directory, found[0], self._latest.directory,
                        self.best_metric)
        if (out := attempt(self._latest, found[0], False)) is not None:
          return out
    raise CorruptCheckpointError(
        f"no intact checkpoint in {mgr.directory}: expected a step whose files match its"
        f" {DIGEST_FILE}, got {'; '.join(problems) or 'none with the metric'}")

  def repair_best(self, target: Any) -> int | None:
    """Makes ``best`` consistent with ``latest`` after a restart (writer only).

    ``latest`` is committed before ``best``, so a kill between them leaves
    ``best`` on an older step (or empty, or corrupt). When the best intact
    step of ``latest`` by `best_metric` beats ``best``'s, it is re-saved as
    best. Returns the step re-saved, or None when ``best`` was consistent.
    """
    if self._best is None or self.read_only:
      return None
    self._finish_digests()
    current, value = self._best.best_step(), None
    if current is not None and self._verify(self._best, current) is None:
      value = self.check(current, best=True).get("metrics", {}).get(self.best_metric)
    found = self._best_of_latest([])
    if found is None:
      return None
    step, meta = found
    v = float(meta["metrics"][self.best_metric])
    if step in self._best.all_steps() or (value is not None and not self._better(v, float(value))):
      return None
    logging.warning("checkpoints %s/best: step %s is stale (%s=%s), step %d of latest has %s=%s"
                    " (killed between the two saves?): re-saving it as best", self.directory,
                    current, self.best_metric, value, step, self.best_metric, v)
    _, state, metrics = self.restore(target, step)
    self._best.save(step, args=self._args(state, metrics), metrics=dict(metrics), force=True)
    self._pending.append((self._best, step))
    self._finish_digests()
    return step

  def wait(self) -> None:
    """Blocks until background writes (and their digests) are complete."""
    self._finish_digests()

  def reached_preemption(self, step: int) -> bool:
    """Orbax's multi-host preemption sync point (False on a single host without a notice)."""
    try:
      return bool(self._latest.reached_preemption(step))
    except Exception:  # no distributed preemption service configured
      return False

  def close(self) -> None:
    self.wait()
    self._latest.close()
    if self._best is not None:
      self._best.close()
