"""Scores stored maps with registered metrics; writes a CSV and a markdown table.

    python -m experiments.evaluate --config=experiments/configs/blockmnist_standard.py \
        --workdir=runs/bm_std --config.evaluate.metrics='("deletion","insertion","relevance_mass")'

Reads ``maps/`` as written by `experiments.explain` (the model is rebuilt
from the same config), runs every metric of `evaluate.metrics` on every
stored method chunk by chunk, and writes::

    results.csv       method, metric, better (higher / lower is better), mean, std, n, note
    results.md        the same as a markdown table
    scores/<method>__<metric>.npy   per-example scores

Arguments a metric needs (its registry entry's ``needs``) are passed: ``mask`` (the
ground-truth region stored with the inputs: BlockMNIST's signal block, the
birds' segmentation, the target class's VOC boxes), ``explainer`` and
``explainer_options`` (robustness metrics re-explain perturbed inputs), and a
`key` for stochastic metrics. A metric that needs something the data do not
have (a mask on CIFAR-10) gets a row with an empty score and a note, rather
than stopping the whole table. Layer maps ``[B, h, w]`` are upsampled
bilinearly to the image size first.
"""
from __future__ import annotations

import csv
import io
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import _common as C
from experiments import explain as E
from saljax import explainers, metrics
from saljax import logging as slog


# Needs evaluate cannot supply, and where to go instead.
_ELSEWHERE = {
    "params": "needs the model as a function of its parameters: run experiments.sanity",
    "random_model": "needs a model trained on permuted labels: run experiments.sanity",
}


def _note(entry, options: dict, has_mask: bool, dataset: str) -> str:
  """Why `entry` cannot be scored here, or "" when it can."""
  for need, why in _ELSEWHERE.items():
    if need in entry.needs:
      return why
  if "classes" in entry.needs and not {"contrast", "group", "contrast_group"} & set(options):
    return f"needs class indices (evaluate.options.{entry.name}: contrast / group)"
  if "mask" in entry.needs and not has_mask:
    return f"needs a ground-truth mask; dataset {dataset!r} has none"
  return ""


def check_metrics(names) -> list[str]:
  if isinstance(names, str):
    names = (names,)
  names = list(names)
  known = metrics.names()
  unknown = [n for n in names if n not in known]
  if unknown or not names:
    raise ValueError(f"evaluate.metrics: unknown metric(s) {unknown or names}; registered: {known}")
  return names


def score_of(out: Any) -> np.ndarray:
  """Per-example scores from a metric's return value: an array ``[B]``, a dict
  with ``"score"``, or a tuple whose first item is the score."""
  if isinstance(out, dict):
    if "score" not in out:
      raise ValueError(f"metric returned a dict without 'score': keys {sorted(out)}")
    out = out["score"]
  elif isinstance(out, (tuple, list)):
    out = out[0]
  return np.asarray(jax.device_get(out), np.float64).reshape(-1)


def _to_pixels(a: np.ndarray, image_shape) -> np.ndarray:
  if a.ndim == 3 and tuple(a.shape[1:]) != tuple(image_shape[:2]):
    a = np.asarray(jax.image.resize(jnp.asarray(a), (a.shape[0], *image_shape[:2]), "bilinear"))
  return a


def run(config, workdir: str) -> dict[str, Any]:
  """Scores every stored method with every metric; returns ``{(method, metric): row}``."""
  config = C.check_config(config)
  workdir = C.check_workdir(workdir)
  names = check_metrics(config.evaluate.metrics)
  with C.writer_of(workdir, "evaluate", [os.path.join(workdir, "scores")], ("results.",)):
    return _run(config, workdir, names)


def _run(config, workdir: str, names) -> dict[str, Any]:
  maps_dir = config.evaluate.maps_dir or os.path.join(workdir, "maps")
  manifest = E.read_manifest(maps_dir)
  inputs = E.load_maps(maps_dir, manifest=manifest)
  image_shape = inputs["image"].shape[1:]
  num_classes = 1000 if manifest["dataset"] == "photos" else None
  if num_classes is None:
    num_classes = C.load_dataset(config, manifest["split"]).num_classes
  trained = C.load_trained(config, workdir, image_shape, num_classes)
  if trained.digest != manifest["model_weights_sha256"]:
    # Scoring maps with another model than the one that made them gives numbers
    # that mean nothing (deletion curves of model B on maps of model A).
    raise ValueError(
        f"{maps_dir}/manifest.json: the maps were made by model {manifest['model']!r} at step"
        f" {manifest['model_step']} (weights {manifest['model_weights_sha256'][:12]}...), but this"
        f" config loads step {trained.step} (weights {trained.digest[:12]}...): run"
        " experiments.explain again with this config, or point explain.train_workdir /"
        " explain.checkpoint at the model that made the maps")
  f = trained.f
  chunk = manifest["chunk_size"]
  n = manifest["num_examples"]
  base_key = jax.random.key(config.seed + 1)
  writer = slog.MetricWriter(workdir, name="evaluate", tensorboard=False, fresh=True)
  writer.write_config(config, "evaluate")
  progress = slog.Progress(len(manifest["methods"]) * len(names), name="evaluate",
                           every_seconds=config.train.progress_every_s)
  os.makedirs(os.path.join(workdir, "scores"), exist_ok=True)
  rows: dict[tuple[str, str], dict[str, Any]] = {}
  done = 0
  for method in manifest["methods"]:
    maps = _to_pixels(E.load_maps(maps_dir, method, manifest)["attribution"], image_shape)
    for name in names:
      done += 1
      entry = metrics.entry(name)
      fn = entry.fn
      opts = dict(config.evaluate.options.get(name, {}) or {})
      note = _note(entry, opts, "gt_mask" in inputs, manifest["dataset"])
      needs_mask = "mask" in entry.needs
      try:
        better = entry.better(**opts)
      except TypeError:  # an unknown option: the call below reports it
        better = None
      if note:
        rows[(method, name)] = {"method": method, "metric": name, "mean": None, "std": None,
                                "n": 0, "note": note, "better": None}
        continue
      scores = []
      for c in range(-(-n // chunk)):
        sl = slice(c * chunk, min((c + 1) * chunk, n))
        # Pad the last chunk by repetition so every call has one shape.
        idx = np.minimum(np.arange(c * chunk, (c + 1) * chunk), n - 1)
        kw = dict(opts)
        if entry.stochastic:
          kw["key"] = jax.random.fold_in(base_key, c)
        if needs_mask:
          kw["mask"] = jnp.asarray(inputs["gt_mask"][idx])
        if "explainer" in entry.needs and "explainer" not in kw:
          kw["explainer"] = explainers.get(method)
          kw.setdefault("explainer_options", dict(config.explain.options.get(method, {}) or {}))
          if explainers.entry(method).kind == "layer":
            note = "layer method: robustness metrics re-explain in pixel space"
            break
        try:
          out = fn(f, jnp.asarray(inputs["image"][idx]), jnp.asarray(maps[idx]),
                   jnp.asarray(inputs["target"][idx]), **kw)
        except (TypeError, ValueError) as err:
          # Options are validated by the metric before any work, so a wrong
          # option costs nothing; the table records why instead of stopping.
          if c > 0:
            raise
          note = f"{type(err).__name__}: {err}"[:300]
          logging.warning("metric %s on %s: %s", name, method, note)
          break
        scores.append(score_of(out)[: sl.stop - sl.start])
      if note:
        rows[(method, name)] = {"method": method, "metric": name, "mean": None, "std": None,
                                "n": 0, "note": note, "better": None}
        continue
      s = np.concatenate(scores)
      C.atomic_write(os.path.join(workdir, "scores", f"{method}__{name}.npy"), lambda p: np.save(p, s))
      rows[(method, name)] = {"method": method, "metric": name, "mean": float(np.mean(s)),
                              "std": float(np.std(s)), "n": int(len(s)), "note": "",
                              "better": better}
      writer.write(0, {f"{method}/{name}": float(np.mean(s))})
      progress.update(done)
  _write_tables(workdir, list(rows.values()))
  progress.close()
  writer.close()
  return rows


def _write_tables(workdir: str, rows: list[dict[str, Any]]) -> None:
  fields = ["method", "metric", "better", "mean", "std", "n", "note"]
  if not slog.is_writer():
    return
  fmt = lambda v: "" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
  lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
  lines += ["| " + " | ".join(fmt(r[k]) for k in fields) + " |" for r in rows]
  C.atomic_write_text(os.path.join(workdir, "results.md"), "\n".join(lines) + "\n")
  buf = io.StringIO(newline="")
  w = csv.DictWriter(buf, fieldnames=fields)
  w.writeheader()
  w.writerows(rows)
  # Last: results.csv is the "done" output.
  C.atomic_write_text(os.path.join(workdir, "results.csv"), buf.getvalue())


if __name__ == "__main__":
  C.app_main(run)
