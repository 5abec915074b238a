"""Scores stored maps with registered metrics; writes a CSV and a markdown table.

    python -m experiments.evaluate --config=experiments/configs/blockmnist_standard.py \
        --workdir=runs/bm_std --config.evaluate.metrics='("deletion","insertion","relevance_mass")'

Reads ``maps/`` as written by `experiments.explain` (the model is rebuilt
from the same config), runs every metric of `evaluate.metrics` on every
stored method chunk by chunk, and writes::

    results.csv       method, metric, better (higher / lower is better), mean, std, n, note
    results.md        the same as a markdown table
    results.json      the rows, and per curve metric its x axis and per method the
                      curve's mean, std, standard error per step and n
    scores/<method>__<metric>.npy   per-example scores
    <metric>.png      per curve metric with an x axis (deletion, insertion,
                      pixel_flipping, area_between_curves, road, sensitivity_n):
                      score vs fraction removed / inserted, one line per method,
                      mean and a band of +-1 standard error, the score in the legend
    metrics_table.png methods x metrics: mean +- s.e., colored by rank within the
                      column (green = best by the metric's direction)

The figures are drawn by `saljax.plots` (`curves`, `metrics_table`), which
notebooks can call on ``results.json`` the same way.

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
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import _common as C
from experiments import explain as E
from saljax import explainers, metrics, plots
from saljax import logging as slog
from saljax.metrics import faithfulness


# Needs evaluate cannot supply, and where to go instead.
_ELSEWHERE = {
    "params": "needs the model as a function of its parameters: run experiments.sanity",
    "random_model": "needs a model trained on permuted labels: run experiments.sanity",
}


# Curve metrics whose x axis is known: the x label and what the legend calls
# the metric's score. (The contrastive curves run over classes and are kept in
# results.json without a figure.)
_CURVES = {
    "deletion": ("fraction of features removed, most relevant first", "AUC"),
    "insertion": ("fraction of features inserted, most relevant first", "AUC"),
    "pixel_flipping": ("fraction of features flipped, {order}", "AUC"),
    "area_between_curves": ("fraction of features removed", "ABC"),
    "road": ("fraction of pixels imputed, {order}", "mean"),
    "sensitivity_n": ("subset size n (features set to the baseline)", "mean"),
}
_ORDER_WORDS = {"morf": "most relevant first", "lerf": "least relevant first"}


def _curve_axis(name: str, opts: dict, k: int, image_shape) -> dict[str, Any] | None:
  """The x positions and labels of `name`'s K-point curve, or None when unknown."""
  if name not in _CURVES:
    return None
  xlabel, score_label = _CURVES[name]
  o = metrics.entry(name).options(**opts)  # the options with the metric's defaults filled in
  xlabel = xlabel.format(order=_ORDER_WORDS.get(o.get("order"), ""))
  if name == "road":
    x = [float(v) for v in o["percentages"]]
  elif name == "sensitivity_n":
    n_values = o["n_values"]
    if n_values is None:
      n_values = faithfulness._default_n_values(np.zeros((1, *image_shape)))
    x = [float(v) for v in np.atleast_1d(n_values)]
  else:  # step i has changed i/steps of the features (faithfulness._perturbation_curve)
    x = np.linspace(0.0, 1.0, k).tolist()
  if len(x) != k:
    return None
  score = o.get("score")
  ylabel = {"sensitivity_n": "corr(attribution sum, output drop)",
            "area_between_curves": f"LeRF - MoRF {score or 'score'}"}.get(
                name, f"target {score}" if score else "score")
  return {"x": x, "xlabel": xlabel, "ylabel": ylabel, "score_label": score_label,
          "log_x": name == "sensitivity_n"}


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


def curve_of(out: Any) -> np.ndarray | None:
  """Per-example curves ``[B, K]`` from a curve metric's ``{"score", "curve"}``
  (None for other return values)."""
  if not isinstance(out, dict) or "curve" not in out:
    return None
  c = np.asarray(jax.device_get(out["curve"]), np.float64)
  return c if c.ndim == 2 else None


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
  # The figures' temporaries, removed by the next run after a kill.
  figures = ("metrics_table.", *(f"{n}." for n in names if n in _CURVES))
  with C.writer_of(workdir, "evaluate", [os.path.join(workdir, "scores")],
                   ("results.", *figures)):
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
  curves: dict[str, dict[str, Any]] = {}  # metric -> axis and per-method curve statistics
  directions: dict[str, str | None] = {}
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
      directions[name] = better
      if note:
        rows[(method, name)] = {"method": method, "metric": name, "mean": None, "std": None,
                                "n": 0, "note": note, "better": None}
        continue
      scores, curve_chunks = [], []
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
        cv = curve_of(out)
        if cv is not None:
          curve_chunks.append(cv[: sl.stop - sl.start])
      if note:
        rows[(method, name)] = {"method": method, "metric": name, "mean": None, "std": None,
                                "n": 0, "note": note, "better": None}
        continue
      s = np.concatenate(scores)
      C.atomic_write(os.path.join(workdir, "scores", f"{method}__{name}.npy"), lambda p: np.save(p, s))
      rows[(method, name)] = {"method": method, "metric": name, "mean": float(np.mean(s)),
                              "std": float(np.std(s)), "n": int(len(s)), "note": "",
                              "better": better}
      if curve_chunks and len({cv.shape[1] for cv in curve_chunks}) == 1:
        cv = np.concatenate(curve_chunks)
        entry_curves = curves.setdefault(name, {
            "axis": _curve_axis(name, opts, cv.shape[1], image_shape), "methods": {}})
        entry_curves["methods"][method] = {
            "mean": cv.mean(0).tolist(), "std": cv.std(0).tolist(),
            "sem": plots.standard_error(cv, 0).tolist(), "n": int(len(cv))}
      writer.write(0, {f"{method}/{name}": float(np.mean(s))})
      progress.update(done)
  _write_tables(workdir, list(rows.values()), curves, directions, manifest)
  progress.close()
  writer.close()
  return rows


def _write_tables(workdir: str, rows: list[dict[str, Any]], curves: dict[str, Any],
                  directions: dict[str, str | None], manifest: dict[str, Any]) -> None:
  fields = ["method", "metric", "better", "mean", "std", "n", "note"]
  if not slog.is_writer():
    return
  C.atomic_write_text(os.path.join(workdir, "results.json"), json.dumps(
      {"rows": rows, "curves": curves}, indent=1))
  _figures(workdir, rows, curves, directions, manifest)
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


def _figures(workdir: str, rows: list[dict[str, Any]], curves: dict[str, Any],
             directions: dict[str, str | None], manifest: dict[str, Any]) -> None:
  """One `saljax.plots.curves` PNG per curve metric with a known x axis, and
  the `saljax.plots.metrics_table` heat table."""
  where = f"{manifest['dataset']} {manifest['split']}, {manifest['model']}"
  by_key = {(r["method"], r["metric"]): r for r in rows}
  for name, got in curves.items():
    axis = got["axis"]
    if axis is None:
      continue
    methods = got["methods"]
    n = max(c["n"] for c in methods.values())
    plots.curves(methods, os.path.join(workdir, f"{name}.png"), x=axis["x"],
                 scores={m: by_key[(m, name)]["mean"] for m in methods},
                 score_label=axis["score_label"], xlabel=axis["xlabel"], ylabel=axis["ylabel"],
                 log_x=axis["log_x"], title=f"{name} ({where}, {n} examples)")
  methods = list(dict.fromkeys(r["method"] for r in rows))
  names = list(dict.fromkeys(r["metric"] for r in rows))
  nan = float("nan")
  mean = [[nan if by_key[(m, k)]["mean"] is None else by_key[(m, k)]["mean"] for k in names]
          for m in methods]
  # The standard error from the table's std (ddof=0): std / sqrt(n - 1).
  sem = [[nan if by_key[(m, k)]["mean"] is None or by_key[(m, k)]["n"] < 2
          else by_key[(m, k)]["std"] / np.sqrt(by_key[(m, k)]["n"] - 1) for k in names]
         for m in methods]
  plots.metrics_table(mean, os.path.join(workdir, "metrics_table.png"), methods=methods,
                      metrics=names, sem=sem, directions={k: directions.get(k) for k in names},
                      title=f"metrics ({where})")


if __name__ == "__main__":
  C.app_main(run)
