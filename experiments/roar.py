"""DiffROAR (Shah, Jain, Netrapalli 2021, "Do Input Gradients Highlight
Discriminative Features?", arXiv:2102.12781): retrain on data where only the
top-k or only the bottom-k attributed coordinates are kept.

    python -m experiments.roar --config=experiments/configs/blockmnist_standard.py \
        --workdir=runs/bm_std --config.roar.method=gradient

Protocol (shared/references/evaluation_protocols.md, sec. 1.2):
- attributions of the trained model (``explain.train_workdir`` or the
  workdir) for the PREDICTED class, on the train and the test split; ranked
  by ``|a|`` per coordinate (channels included, as the reference code's
  `get_attribution_indices`); ``roar.method = "random"`` ranks by standard
  normal scores (the reference's `RandomAttribution`, expected DiffROAR 0);
- for each k in `roar.fractions` (the share of coordinates KEPT) and each
  seed of `roar.seeds`: keep the top-k (resp. bottom-k) coordinates, set the
  others to `roar.fill` (0: the mean of standardized inputs), retrain a fresh
  model of the same architecture for `roar.retrain_steps` on the masked train
  split, and measure its accuracy on the masked test split;
- DiffROAR(k) = acc(top-k) - acc(bottom-k): > 0 supports "attributions rank
  discriminative features first", < 0 violates it.

Writes ``roar.csv`` (k, seed, acc_top, acc_bottom, diffroar), ``roar.json``
(mean and std over seeds per k) and ``roar.png`` (the DiffROAR curve).
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import _common as C
from experiments import explain as E
from experiments import train as T
from saljax import explainers
from saljax import logging as slog
from saljax.data import pipelines


def attribution_scores(config, trained: C.Trained, ds: pipelines.Dataset, method: str,
                       key) -> np.ndarray:
  """``|attribution|`` of every example of `ds` for its predicted class, ``[N, ...]``.

  Runs in chunks of `roar.attribution_batch` (the last padded by repetition,
  so the explainer compiles once).
  """
  n = len(ds)
  bs = int(config.roar.attribution_batch)
  if method == "random":
    return np.abs(np.asarray(jax.random.normal(key, (n, *ds.image_shape))))
  e = explainers.entry(method)
  if e.kind == "layer":
    raise ValueError(f"roar.method: {method!r} is a layer method; DiffROAR masks input coordinates")
  opts = dict(config.explain.options.get(method, {}) or {})
  predict = jax.jit(lambda x: jnp.argmax(trained.f(x), -1).astype(jnp.int32))
  out = np.empty((n, *ds.image_shape), np.float32)
  for c in range(-(-n // bs)):
    idx = np.arange(c * bs, (c + 1) * bs)
    valid = int((idx < n).sum())
    x = jnp.asarray(ds.batch(np.minimum(idx, n - 1))["image"])
    k = jax.random.fold_in(key, c) if e.stochastic else None
    a = e.fn(trained.f, x, predict(x), key=k, **opts)
    out[c * bs: c * bs + valid] = np.abs(np.asarray(a, np.float32))[:valid]
  return out


def masked_dataset(ds: pipelines.Dataset, scores: np.ndarray, k: float, top: bool, fill: float,
                   batch: int = 256) -> pipelines.ArrayDataset:
  """`ds` with only the `k` share of coordinates of largest (`top`) or smallest
  `scores` kept, the others set to `fill`.

  Uses `saljax.metrics.remove_by_attribution` per coordinate (keeping
  the top-k is removing the bottom 1-k), in chunks of `batch` examples.
  """
  from saljax.metrics import remove_by_attribution

  data = ds.batch(np.arange(len(ds)))
  images = np.empty_like(data["image"], np.float32)
  for lo in range(0, len(ds), batch):
    sl = slice(lo, lo + batch)
    images[sl] = np.asarray(remove_by_attribution(
        jnp.asarray(data["image"][sl], jnp.float32), jnp.asarray(scores[sl]), 1.0 - k,
        remove="bottom" if top else "top", fill=float(fill), absolute=True, per_coordinate=True))
  data["image"] = images
  return pipelines.ArrayDataset(ds.name + "_masked", ds.split, data, num_classes=ds.num_classes)


def retrain_accuracy(config, ds_train, ds_test, seed: int) -> float:
  """Test accuracy of a fresh model trained for `roar.retrain_steps` (no checkpoints)."""
  model = C.build_model(config, ds_train.num_classes, ds_train.image_shape)
  tcfg = config.train
  cfg = config.copy_and_resolve_references() if hasattr(config, "copy_and_resolve_references") else config
  cfg.unlock()
  cfg.train.steps = int(config.roar.retrain_steps)
  cfg.train.eval_examples = 0
  cfg.train.adversarial.mode = "none"  # retraining is standard training, whatever trained the model
  tx = C.make_optimizer(cfg.train)
  state = C.init_state(model, tx, C.init_key(seed), ds_train.image_shape)
  train_step, eval_step = T.make_steps(cfg, model, tx, None)
  for step in range(cfg.train.steps):
    b = ds_train.batch_for_step(step, tcfg.batch_size, seed=seed)
    state, _ = train_step(state, jnp.asarray(b["image"]), jnp.asarray(b["label"]))
  return T.evaluate(eval_step, state, ds_test, cfg)["eval_accuracy"]


def run(config, workdir: str) -> dict[str, Any]:
  """Runs DiffROAR; returns ``{"rows": [...], "curve": {k: (mean, std)}}``."""
  config = C.check_config(config)
  workdir = C.check_workdir(workdir)
  rcfg = config.roar
  method = rcfg.method
  if method != "random":
    E.check_methods((method,), "roar.method")
  fractions = [float(k) for k in rcfg.fractions]
  if not fractions or any(not 0.0 < k <= 1.0 for k in fractions):
    raise ValueError(f"roar.fractions: expected shares of kept coordinates in (0, 1], got {fractions}")
  if int(rcfg.retrain_steps) < 1 or not rcfg.seeds:
    raise ValueError(f"roar.retrain_steps and roar.seeds: expected >= 1 step and >= 1 seed, got"
                     f" {rcfg.retrain_steps}, {rcfg.seeds}")
  if config.model.pretrained:
    raise ValueError("model.pretrained: DiffROAR retrains the architecture from scratch; use a"
                     " trainable model")
  with C.writer_of(workdir, "roar", [os.path.join(workdir, "roar", "units")], ("roar",)):
    return _run(config, workdir, method, fractions)


def _run(config, workdir, method, fractions):
  rcfg = config.roar
  ds_train = C.load_dataset(config, config.data.train_split)
  ds_test = C.load_dataset(config, config.data.eval_split)
  trained = C.load_trained(config, workdir, ds_train.image_shape, ds_train.num_classes)
  key = jax.random.key(config.seed)
  scores = {}

  def attributions():
    # Only when some unit must be computed: a rerun with every unit stored explains nothing.
    if not scores:
      scores["train"] = attribution_scores(config, trained, ds_train, method, jax.random.fold_in(key, 0))
      scores["test"] = attribution_scores(config, trained, ds_test, method, jax.random.fold_in(key, 1))
    return scores["train"], scores["test"]

  writer = slog.MetricWriter(workdir, name="roar", tensorboard=False, fresh=True)
  writer.write_config(config, "roar")
  store = C.UnitStore(os.path.join(workdir, "roar", "units"))
  ignored = ("steps", "log_every", "eval_every", "eval_examples", "checkpoint_every", "max_to_keep",
             "best_metric", "async_checkpoint", "progress_every_s", "permute_labels", "adversarial")
  base = {"format": 1, "model": C.model_record(trained.model.name, trained.step, trained.digest),
          "architecture": slog.config_to_dict(config.model),
          "data": C.data_record(config, config.data.train_split, eval_split=config.data.eval_split),
          "method": method,
          "options": dict(config.explain.options.get(method, {}) or {}) if method != "random" else {},
          "attribution_batch": int(rcfg.attribution_batch), "seed": int(config.seed),
          "fill": float(rcfg.fill), "retrain_steps": int(rcfg.retrain_steps),
          "retrain": {k: v for k, v in slog.config_to_dict(config.train).items() if k not in ignored}}
  progress = slog.Progress(len(fractions) * len(rcfg.seeds) * 2, name="roar",
                           every_seconds=config.train.progress_every_s)
  rows = []
  done = 0
  for k in fractions:
    acc = {}
    for top in (True, False):
      acc[top] = []
      masked = None
      for s in rcfg.seeds:
        # One unit: one retraining (k, top or bottom, seed).
        prov = {**base, "k": k, "kept": "top" if top else "bottom", "retrain_seed": int(s)}
        unit = f"k{k:g}__{'top' if top else 'bottom'}__seed{int(s)}"
        got = store.get(unit, prov)
        if got is None:
          if masked is None:
            s_train, s_test = attributions()
            masked = (masked_dataset(ds_train, s_train, k, top, rcfg.fill, int(rcfg.attribution_batch)),
                      masked_dataset(ds_test, s_test, k, top, rcfg.fill, int(rcfg.attribution_batch)))
          a = float(retrain_accuracy(config, *masked, int(s)))
          store.put(unit, prov, accuracy=np.float64(a))
        else:
          a = float(got["accuracy"])
        acc[top].append(a)
        done += 1
        progress.update(done)
    for i, s in enumerate(rcfg.seeds):
      rows.append({"k": k, "seed": int(s), "acc_top": acc[True][i], "acc_bottom": acc[False][i],
                   "diffroar": acc[True][i] - acc[False][i]})
    d = [r["diffroar"] for r in rows if r["k"] == k]
    writer.write(int(round(1000 * k)), {"diffroar_mean": float(np.mean(d))})
  curve = {}
  for k in fractions:
    d = np.array([r["diffroar"] for r in rows if r["k"] == k])
    curve[k] = (float(d.mean()), float(d.std()))
  if slog.is_writer():
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=["k", "seed", "acc_top", "acc_bottom", "diffroar"])
    w.writeheader()
    w.writerows(rows)
    C.atomic_write_text(os.path.join(workdir, "roar.csv"), buf.getvalue())
    _figure(workdir, method, curve)
    # Last: roar.json is the "done" output.
    C.atomic_write_text(os.path.join(workdir, "roar.json"), json.dumps(
        {"method": method, "curve": {str(k): v for k, v in curve.items()}}, indent=2))
  progress.close()
  writer.close()
  logging.info("DiffROAR %s: %s", method, curve)
  return {"rows": rows, "curve": curve, "units": {"reused": store.reused, "computed": store.computed}}


def _figure(workdir, method, curve):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ks = sorted(curve)
  mean = np.array([curve[k][0] for k in ks])
  std = np.array([curve[k][1] for k in ks])
  fig, ax = plt.subplots(figsize=(4, 3))
  ax.plot(ks, mean, marker="o", label=method)
  ax.fill_between(ks, mean - std, mean + std, alpha=0.2)
  ax.axhline(0, color="gray", lw=0.5)
  ax.set_xlabel("k (fraction of unmasked coordinates)")
  ax.set_ylabel("DiffROAR = acc(top-k) - acc(bottom-k)")
  ax.legend(fontsize=7)
  C.save_figure(fig, os.path.join(workdir, "roar.png"), dpi=90, bbox_inches="tight")


if __name__ == "__main__":
  C.app_main(run)
