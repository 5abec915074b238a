r"""Meta-evaluation of the faithfulness and robustness metrics (MetaQuantus).

    python -m experiments.meta_evaluate --config=experiments/configs/meta_evaluate.py \
        --workdir=runs/meta

Trains a small CNN (`saljax.models.cnn`, with `saljax.models.quick`'s trainer)
on images of `saljax.data.synthetic.segmentation` labelled by the shape class
that covers the most pixels, or loads its variables from ``config.checkpoint``
(a flax msgpack file, as this binary writes to ``<workdir>/model.msgpack``).
Then, for every metric of ``config.meta.metrics``, runs `saljax.meta.meta_evaluate`
with the explainers of ``config.meta.explainers`` on ``config.data.n_eval``
held-out images explained for the model's predictions, and writes (each file
atomically, rewritten after every metric so an interrupted run keeps what it
finished)::

    meta_evaluation.jsonl   one line per metric: the criteria and MC per space,
                            the share of examples each test kept, seconds, options
    meta_evaluation.md      the same as markdown tables (one per perturbation space)
    model.msgpack           the trained variables (when trained here)

MC near 1: the metric's scores stay put under minor perturbations and get
worse under major ones, and the explainers' ranking agrees; near 0.5: no
better than a metric that returns noise.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import _common as C


def _labelled(n: int, split: str, cfg) -> tuple[np.ndarray, np.ndarray]:
  """Synthetic images and the shape class covering the most pixels (0-based)."""
  from saljax.data import synthetic
  d = synthetic.segmentation(n, split=split, seed=cfg.seed, size=cfg.data.size,
                             num_classes=cfg.data.classes + 1)
  counts = np.stack([(d["mask"] == k).sum((1, 2)) for k in range(1, cfg.data.classes + 1)], 1)
  return d["image"], counts.argmax(1).astype(np.int32)


def build_model(cfg, workdir: str):
  """(classifier, test accuracy or None, where the weights came from)."""
  import flax.serialization
  from saljax.models import cnn, quick, wrap
  module = cnn(cfg.data.classes, features=tuple(cfg.train.features), hidden=cfg.train.hidden)
  shape = (cfg.data.size, cfg.data.size, 3)
  if cfg.checkpoint:
    if not os.path.isfile(cfg.checkpoint):
      raise ValueError(f"checkpoint: expected a flax msgpack file, got {cfg.checkpoint!r}"
                       " (no such file)")
    template = wrap(module, input_shape=shape).params
    with open(cfg.checkpoint, "rb") as fh:
      variables = flax.serialization.from_bytes(template, fh.read())
    return wrap(module, variables, input_shape=shape, name="meta_cnn"), None, cfg.checkpoint
  x, y = _labelled(cfg.data.n_train, "train", cfg)
  variables, losses, seconds = quick._train(module, x, y, seed=cfg.seed, steps=cfg.train.steps,
                                            batch_size=cfg.train.batch_size,
                                            learning_rate=cfg.train.learning_rate)
  clf = wrap(module, variables, input_shape=shape, name="meta_cnn")
  path = os.path.join(workdir, "model.msgpack")
  C.atomic_write(path, lambda p: p.write_bytes(flax.serialization.to_bytes(variables)))
  logging.info("trained in %.1f s, final loss %.3f", seconds, float(losses[-1]))
  return clf, None, "trained"


def _tests(cfg):
  from saljax import meta
  m = cfg.meta
  return (meta.PerturbationTest("model", "resilience", float(m.model_resilience)),
          meta.PerturbationTest("model", "adversary", float(m.model_adversary)),
          meta.PerturbationTest("input", "resilience", float(m.input_resilience)),
          meta.PerturbationTest("input", "adversary", float(m.input_adversary)))


def _plain(v: Any) -> Any:
  """ConfigDict / tuples / numpy scalars as JSON-ready values."""
  if hasattr(v, "to_dict"):
    v = v.to_dict()
  if isinstance(v, dict):
    return {k: _plain(u) for k, u in v.items()}
  if isinstance(v, (list, tuple)):
    return [_plain(u) for u in v]
  if isinstance(v, (np.floating, float)):
    return None if not math.isfinite(float(v)) else float(v)
  if isinstance(v, np.integer):
    return int(v)
  return v


def _fmt(v) -> str:
  return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def markdown(rows: list[dict], header: dict) -> str:
  """The rows as one markdown table per perturbation space."""
  from saljax.meta import CRITERIA
  out = [f"Model: {header['model']}; {header['n_eval']} examples, {header['draws']} draws per"
         f" test; explainers: {', '.join(header['explainers'])}.", ""]
  for space in ("model", "input"):
    out += [f"**{space.capitalize()} perturbation test**", "",
            "| metric | better | " + " | ".join(CRITERIA) + " | MC | kept NR | kept AR |",
            "|---|---|" + "---:|" * (len(CRITERIA) + 3)]
    for r in rows:
      s = r.get("scores", {}).get(space)
      if s is None:
        out.append(f"| {r['metric']} | | " + " | ".join(["error"] * (len(CRITERIA) + 3)) + " |")
        continue
      cells = [_fmt(s[c]) for c in CRITERIA] + [f"**{_fmt(s['MC'])}**", _fmt(s["kept_NR"]),
                                                 _fmt(s["kept_AR"])]
      better = "lower" if r["lower_is_better"] else "higher"
      out.append(f"| {r['metric']} | {better} | " + " | ".join(cells) + " |")
    out.append("")
  return "\n".join(out)


def run(config, workdir: str) -> dict[str, Any]:
  """Meta-evaluates every metric of the config; returns ``{"rows": [...], "accuracy"}``."""
  from saljax import meta, metrics
  cfg = config
  workdir = C.check_workdir(workdir)
  unknown = [m for m in cfg.meta.metrics if m not in metrics.names()]
  if unknown:
    raise ValueError(f"meta.metrics: unknown {unknown}; known: {metrics.names()}")
  model, _, source = build_model(cfg, workdir)
  x, y = _labelled(cfg.data.n_eval, "test", cfg)
  x = jnp.asarray(x)
  pred = jnp.argmax(model(x), -1).astype(jnp.int32)
  accuracy = float((np.asarray(pred) == y).mean())
  logging.info("model %s: accuracy %.3f on the %d evaluation images", source, accuracy, len(y))
  eopts = _plain(cfg.meta.explainer_options)
  explainers = {n: eopts.get(n, {}) for n in cfg.meta.explainers}
  options = _plain(cfg.meta.options)
  header = {"model": f"saljax cnn{tuple(cfg.train.features)} on {cfg.data.size}x{cfg.data.size}"
                     f" synthetic shapes ({source}, test accuracy {accuracy:.3f})",
            "n_eval": int(cfg.data.n_eval), "draws": int(cfg.meta.draws),
            "explainers": list(cfg.meta.explainers)}
  rows = []
  key = jax.random.key(cfg.seed)
  for i, name in enumerate(cfg.meta.metrics):
    opts = {k: tuple(v) if isinstance(v, list) else v for k, v in options.get(name, {}).items()}
    t0 = time.perf_counter()
    try:
      r = meta.meta_evaluate(name, model, x, pred, explainers, key=jax.random.fold_in(key, i),
                             tests=_tests(cfg), draws=cfg.meta.draws, metric_options=opts,
                             batch_size=cfg.meta.batch_size)
      row = {"metric": name, "lower_is_better": r["lower_is_better"], "scores": r["scores"]}
    except Exception as e:  # report and go on: one metric must not stop the run
      logging.error("%s failed: %s", name, e)
      row = {"metric": name, "lower_is_better": False, "error": f"{type(e).__name__}: {e}"}
    row.update(seconds=time.perf_counter() - t0, options=opts, draws=int(cfg.meta.draws),
               explainers=list(cfg.meta.explainers), accuracy=accuracy)
    rows.append(_plain(row))
    logging.info("%s: %s (%.0f s)", name, row.get("scores", row.get("error")), row["seconds"])
    C.atomic_write_text(os.path.join(workdir, "meta_evaluation.jsonl"),
                        "".join(json.dumps(r) + "\n" for r in rows))
    C.atomic_write_text(os.path.join(workdir, "meta_evaluation.md"), markdown(rows, header))
  return {"rows": rows, "accuracy": accuracy}


if __name__ == "__main__":
  C.app_main(run, __doc__)
