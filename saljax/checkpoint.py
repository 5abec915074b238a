"""Checkpoints with Orbax: keep the last N, keep the best by a metric, resume
from the latest, refuse a checkpoint written by another model.

Two Orbax `CheckpointManager`s share a directory: ``<dir>/latest`` keeps the
last `max_to_keep` steps (what a restart resumes from) and ``<dir>/best``
keeps the single best step by `best_metric` (so "best" never evicts the step
a restart needs). Each step stores the state pytree and a small JSON
``meta`` (the model's fingerprint and the step's metrics).

Orbax writes a step into a temporary directory and renames it when complete,
and lists only complete steps, so a run killed while writing leaves nothing
that a restart could read as good; stale temporary directories are removed at
start-up.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

CKPT_META_VERSION = 1


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
    directory: where checkpoints go (created).
    fingerprint: `fingerprint(model_name, state)` of the model of this run;
      restoring a checkpoint with another fingerprint raises ValueError.
    max_to_keep: how many recent steps to keep (default 3).
    best_metric: name of the metric that picks the best step (None: no best).
    best_mode: ``"max"`` (default) or ``"min"``.
    async_save: write in the background (Orbax's default); `wait` blocks.
  """

  def __init__(self, directory: str, *, fingerprint: Mapping[str, Any], max_to_keep: int = 3,
               best_metric: str | None = None, best_mode: str = "max", async_save: bool = True):
    import orbax.checkpoint as ocp

    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode: expected 'max' or 'min', got {best_mode!r}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.fingerprint = dict(fingerprint)
    self.best_metric = best_metric
    self._ocp = ocp
    opts = dict(create=True, cleanup_tmp_directories=True, enable_async_checkpointing=async_save)
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

  def save(self, step: int, state: Any, *, metrics: Mapping[str, float] | None = None,
           force: bool = False) -> None:
    """Saves `state` at `step` (and as the best one when `metrics` has `best_metric`)."""
    self._latest.save(int(step), args=self._args(state, metrics), force=force)
    if self._best is not None and metrics and self.best_metric in metrics:
      m = {k: float(v) for k, v in metrics.items()}
      self._best.save(int(step), args=self._args(state, metrics), metrics=m, force=True)

  def check(self, step: int | None = None, *, best: bool = False) -> dict[str, Any]:
    """Reads the meta of `step` (latest by default) and raises if its fingerprint differs."""
    mgr = self._best if best else self._latest
    if mgr is None:
      raise ValueError("best: this manager keeps no best checkpoint (best_metric=None)")
    step = (mgr.best_step() if best else mgr.latest_step()) if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {mgr.directory}")
    meta = mgr.restore(step, args=self._ocp.args.Composite(meta=self._ocp.args.JsonRestore()))["meta"]
    got = meta.get("fingerprint", {})
    if got != self.fingerprint:
      raise ValueError(
          f"checkpoint {mgr.directory}/{step} does not fit this model: "
          f"{_describe_mismatch(self.fingerprint, got)}. Use another workdir or the matching config.")
    return meta

  def restore(self, target: Any, step: int | None = None, *, best: bool = False) -> tuple[int, Any, dict]:
    """Restores `step` (default latest, or the best with ``best=True``) into the
    structure of `target`; returns ``(step, state, metrics)``.

    Raises:
      FileNotFoundError: no complete checkpoint.
      ValueError: the checkpoint was written by another model.
    """
    mgr = self._best if best else self._latest
    step = (self.best_step() if best else self.latest_step()) if step is None else step
    meta = self.check(step, best=best)
    abstract = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) if not hasattr(a, "sharding")
        else jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), target)
    out = mgr.restore(step, args=self._ocp.args.Composite(state=self._ocp.args.StandardRestore(abstract)))
    return int(step), out["state"], meta.get("metrics", {})

  def wait(self) -> None:
    """Blocks until background writes are complete."""
    self._latest.wait_until_finished()
    if self._best is not None:
      self._best.wait_until_finished()

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
