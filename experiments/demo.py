"""The real demo: every registered explainer on the pretrained EfficientNet-Lite0
and the bundled photos, each map judged against hand-drawn ground truth.

    python -m experiments.demo --workdir=runs/demo        (what `make demo` runs)

Converts the PyTorch weights once (cached under ``$SALJAX_CACHE``), classifies
the six bundled photos, explains each photo's top-1 class with every method in
`saljax.explainers.names()`, judges every map, and writes to the workdir:

    summary.json          model, device, each photo's top-5 classes, the ground
                          truth, and per method: status (ok / failed / not
                          applicable), options, photos, seconds (compile
                          included), model evaluations per example, scores
    maps/<method>.npz     attribution (pixel methods: [N, 224, 224, 3]; layer
                          methods: [N, h, w]), targets, photo names
    rows/<method>.png     the method's overlays under the photos (the page's cards)
    grid.png              every method, grouped by family, ground-truth boxes drawn
    index.html            the report page (experiments.report)

**Judging.** Each map is scored on what the grid shows (`saljax.viz.shown_values`:
the registered display's channel aggregation and sign mode, a layer map
upsampled to 224 px): the pointing game (TorchRay's 15 px tolerance) and the
energy pointing game against the boxes of `saljax.data.bundled_photos.boxes`
(drawn around the object of each photo's top class; a photo whose top class
differs from the box's class is left out of both), and deletion (lower is
better) and insertion (higher is better) AUC of the softmax probability in
`JUDGE_STEPS` steps (RISE's protocol with coarser steps; all maps are judged
together at the end, ~1 s a method on a CPU). A map that is constant on a photo, non-finite, or a
method that raises is a failure, reported in the table and in the exit status.

**Settings.** Every method runs at settings where its maps have converged
(`DEMO_OPTIONS`, recorded in the summary; the library defaults are the papers'
values, see each docstring). The methods that need thousands of model
evaluations per photo run on `SUBSET_PHOTOS` only (`ON_SUBSET`), so that all of
them finish in 10 minutes on 2 CPU cores; their scores are over those photos
(each method's ``photos`` says which). A method that cannot run within
`budget_s` is reported as failed, never silently skipped.
"""
from __future__ import annotations

import json
import os
import pathlib
import platform
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from experiments import _common as C
from experiments import report

# Settings at which the maps have converged on this model (checked by eye and
# by their scores against more steps/samples; see docs/demo.md). The library's
# defaults are the papers' values.
DEMO_OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": dict(steps=20),
    "blur_ig": dict(steps=20),
    "guided_ig": dict(steps=16),
    "smoothgrad": dict(samples=10),
    "squaregrad": dict(samples=10),
    "vargrad": dict(samples=10),
    "expected_gradients": dict(samples=16),
    "gradient_shap": dict(samples=16),
    "xrai": dict(steps=16),
    "occlusion": dict(window=32, stride=24),
    "rise": dict(masks=800),
    "hsic": dict(samples=384),
    "sobol": dict(grid=7, designs=8),
    "kernel_shap": dict(samples=256),
    "lime": dict(samples=256),
    "shapley_sampling": dict(samples=4),
    # A 4 x 4 grid: 172 evaluations (the default 8 x 8 grid costs 2,732).
    "owen_values": dict(segmentation_options={"cells": 4}),
    "extremal_perturbation": dict(iterations=250),
    # 16 superpixels instead of 50 and a 4-long shortlist: LiMA's greedy search
    # evaluates the model for every candidate region at every step.
    "lima": dict(segmentation_options={"n_segments": 16}, pending=4),
    # The head (1280 channels), the last conv layer as in the paper: at
    # blocks_15 (320 channels, 7x7) the map marked one corner cell of the cat.
    "scorecam": dict(layer="head", batch_size=128),
    # Layer attribution at the CAM layer; the path methods at 8 steps (each step
    # is a full forward and backward pass).
    "layer_gradient_x_activation": dict(layer="head"),
    "layer_integrated_gradients": dict(layer="head", steps=8),
    "layer_conductance": dict(layer="head", steps=8),
    # Below the head: the head feeds the global average pool directly, so the
    # gradient there (what internal influence integrates) is the same at every
    # cell and the map is constant.
    "internal_influence": dict(layer="blocks_15", steps=8),
}
# The photos the costly methods run on: a compact object (the espresso) and a
# thin one (the rocket), both with boxes that discriminate (the cat fills its
# photo, so every map hits it).
SUBSET_PHOTOS = ("coffee", "rocket")
# Method -> how many of `SUBSET_PHOTOS` it runs on: the ones that need
# thousands of model evaluations (or hundreds of optimizer steps) per photo.
ON_SUBSET = {"rise": 2, "hsic": 2, "sobol": 2, "kernel_shap": 2, "lime": 2, "shapley_sampling": 2,
             "owen_values": 2, "xrai": 2, "lima": 2, "scorecam": 1, "extremal_perturbation": 1,
             "layer_integrated_gradients": 2, "layer_conductance": 2, "internal_influence": 2}
# Deletion / insertion steps (RISE uses one image row per step, 224 steps).
JUDGE_STEPS = 8
# Methods whose references are the demo's photos (input space).
NEEDS_REFERENCES = ("expected_gradients", "gradient_shap")
# ViT-only methods: the pretrained model is a CNN.
NOT_APPLICABLE = {
    "attention_rollout": "needs a ViT's attention maps; the pretrained model is a CNN",
    "class_token_attention": "needs a ViT's class token; the pretrained model is a CNN",
    "vit_gradcam": "needs ViT tokens; the pretrained model is a CNN",
    "prompt_cam": "needs a Prompt-CAM model (class prompts on a ViT); the pretrained model is a CNN",
    "neuron_gradient": "explains one unit's activation (neuron=), not the class",
    "neuron_integrated_gradients": "explains one unit's activation (neuron=), not the class",
}
# Run last: many model evaluations per example, so the cheap methods finish first.
SLOW_LAST = ("integrated_gradients", "expected_gradients", "occlusion", "rise", "kernel_shap", "lime",
             "hsic", "sobol", "shapley_sampling", "owen_values", "xrai", "extremal_perturbation", "blur_ig",
             "guided_ig", "scorecam", "lima")


def method_order(names: Sequence[str]) -> list[str]:
  fast = [n for n in names if n not in SLOW_LAST]
  slow = [n for n in SLOW_LAST if n in names]
  return fast + slow


def _enable_compilation_cache() -> None:
  """JAX's persistent compilation cache under ``$SALJAX_CACHE/jax``: compiling
  is most of the demo's time on a CPU, and a second run reuses it."""
  if jax.config.jax_compilation_cache_dir:
    return  # the user chose one
  from saljax.models import pretrained
  jax.config.update("jax_compilation_cache_dir", str(pretrained.cache_dir() / "jax"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _call_options(name: str, model, x, options: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
  """(f, keyword options) for explainer `name` on the pretrained `model`."""
  from saljax import explainers
  entry = explainers.entry(name)
  opts = dict(options.get(name, {}))
  if entry.kind == "layer":
    f = model.tapped
    opts.setdefault("layer", model.default_layer)
  else:
    f = model
  if name in NEEDS_REFERENCES:
    opts.setdefault("references", x)
  if entry.stochastic:
    opts.setdefault("key", jax.random.key(0))
  return f, opts


def _printable(opts: Mapping[str, Any]) -> dict[str, Any]:
  out = {}
  for k, v in opts.items():
    if k == "key":
      out[k] = "jax.random.key(0)"
    elif hasattr(v, "shape"):
      out[k] = f"array{tuple(v.shape)}"
    else:
      out[k] = v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
  return out


def _paper(entry) -> str:
  """The first sentence of the docstring: the paper's citation."""
  doc = (entry.fn.__doc__ or "").strip()
  first = doc.split("\n\n")[0]
  return " ".join(first.split())


def _ground_truth(photo_lib, photo_names, targets, image_size):
  """(boxes [N, K, 4] padded with empty rows, has_box [N] bool, record)."""
  table = photo_lib.boxes(photo_names, image_size=image_size)
  k = max(len(table[p]["boxes"]) for p in photo_names)
  boxes = np.zeros((len(photo_names), k, 4), np.int32)  # zero rows are padding
  has = np.zeros(len(photo_names), bool)
  rec = {}
  for i, p in enumerate(photo_names):
    t = table[p]
    boxes[i, :len(t["boxes"])] = t["boxes"]
    has[i] = t["class"] == int(targets[i])
    rec[p] = {"class": t["class"], "class_name": t["class_name"], "boxes": t["boxes"].tolist(),
              "used": bool(has[i])}
  return boxes, has, rec


def judge(model, x, targets, shown, boxes, has_box, key):
  """``(scores, curves)``: per-row scores ``{metric: [n]}`` of the maps `shown`
  ``[n, H, W]`` on photos `x` ``[n, ...]`` (NaN where a photo has no ground
  truth for its target) and the deletion / insertion curves ``[n, steps + 1]``."""
  from saljax import metrics
  n = len(x)
  out = {}
  for name in ("pointing_game", "energy_pointing_game"):
    v = np.full(n, np.nan)
    if has_box.any():
      idx = np.flatnonzero(has_box)
      v[idx] = np.asarray(metrics.get(name)(model, x[idx], shown[idx], targets[idx],
                                            boxes=boxes[idx], **({"key": key} if name == "pointing_game" else {})))
    out[name] = v
  curves = {}
  for name in ("deletion", "insertion"):
    # One step at a time: a batch of every judged map (~200 images) per forward.
    r = metrics.get(name)(model, x, shown, targets, key=key, steps=JUDGE_STEPS, batch_size=1)
    out[name] = np.asarray(r["score"], np.float64)
    curves[name] = np.asarray(r["curve"], np.float64)
  return out, curves


def _mean(v) -> float | None:
  v = np.asarray(v, np.float64)
  v = v[np.isfinite(v)]
  return round(float(v.mean()), 4) if v.size else None


def table_lines(summary: Mapping[str, Any]) -> list[str]:
  """The one-screen table: method, pointing game, energy, deletion, insertion,
  evaluations per photo, seconds, status."""
  w = max([24] + [len(n) for n in summary["methods"]])
  head = (f"{'method':{w}s} {'photos':>6s} {'point^':>7s} {'energy^':>7s} {'delet.v':>7s}"
          f" {'insert^':>7s} {'evals':>7s} {'secs':>6s}  status")
  lines = [head, "-" * len(head)]
  fmt = lambda v: f"{v:7.3f}" if isinstance(v, (int, float)) else f"{'-':>7s}"
  from saljax import viz
  # Grouped by family and year, as the grid and the page.
  ordered = [n for _, names in viz._groups(list(summary["methods"]), True) for n in names]
  for name in ordered:
    r = summary["methods"][name]
    sc = r.get("scores") or {}
    ev = r.get("evaluations")
    lines.append(
        f"{name:{w}s} {len(r.get('photos') or []):6d} {fmt(sc.get('pointing_game'))}"
        f" {fmt(sc.get('energy_pointing_game'))} {fmt(sc.get('deletion'))} {fmt(sc.get('insertion'))}"
        f" {ev if ev is not None else '-':>7} {r.get('seconds', '-'):>6}  {r['status']}"
        + (f": {r.get('error', r.get('reason', ''))[:60]}" if r["status"] != "ok" else ""))
  return lines


def run(workdir: str, *, photos: Sequence[str] | None = None, methods: Sequence[str] | None = None,
        model_name: str = "efficientnet_lite0", budget_s: float = 600.0,
        options: Mapping[str, Mapping[str, Any]] | None = None, subset: Sequence[str] | None = None,
        log: Callable[[str], None] = print, compilation_cache: bool = True,
        page: bool = True) -> dict[str, Any]:
  """Runs the demo and returns the summary (also written to ``summary.json``).

  Args:
    workdir: output directory (created).
    photos: names of bundled photos (default: all six).
    methods: explainer names (default: every registered explainer).
    model_name: a `saljax.models.load_pretrained` name.
    budget_s: a method that would start after this many seconds since the
      start is not run and reported as FAILED (the demo promises every method
      within its budget; a slow machine should see that it did not hold).
    options: per-method keyword options replacing `DEMO_OPTIONS` entries.
    subset: the photos of the costly methods (`ON_SUBSET` says how many of
      them each uses; default `SUBSET_PHOTOS` among `photos`, else the first
      two of `photos`).
    log: progress printer.
    compilation_cache: turn on JAX's persistent compilation cache (a global
      setting) under ``$SALJAX_CACHE/jax``, so a second demo compiles less.
    page: write ``index.html`` (`experiments.report`).
  """
  import importlib

  import saljax
  from saljax import explainers, models, viz
  photo_lib = importlib.import_module("saljax.data.bundled_photos")

  t_start = time.perf_counter()
  table = {**DEMO_OPTIONS, **{k: dict(v) for k, v in (options or {}).items()}}
  names = list(explainers.names()) if methods is None else list(methods)
  unknown = [n for n in names if n not in explainers.names()]
  if unknown:
    raise ValueError(f"methods: unknown explainer(s) {unknown}; registered: {explainers.names()}")
  if not isinstance(budget_s, (int, float)) or budget_s <= 0:
    raise ValueError(f"budget_s: expected seconds > 0, got {budget_s!r}")
  imgs = photo_lib.photos(photos)  # validates the names
  photo_names = list(imgs)
  if subset is None:
    subset = [p for p in SUBSET_PHOTOS if p in photo_names] or photo_names[:2]
  subset = list(subset)
  bad = [p for p in subset if p not in photo_names]
  if bad or not subset:
    raise ValueError(f"subset: expected some of the demo's photos {photo_names}, got {list(subset)}")
  if compilation_cache:
    _enable_compilation_cache()
  out = pathlib.Path(workdir)
  for d in ("maps", "rows"):
    (out / d).mkdir(parents=True, exist_ok=True)

  log(f"[demo] loading {model_name} (the first run converts the PyTorch weights)")
  model = models.load_pretrained(model_name, verbose=True)
  x = model.preprocess(list(imgs.values()))
  idx, prob, labels = model.top_k(x, 5)
  targets = idx[:, 0].astype(np.int32)
  top5 = {}
  for i, p in enumerate(photo_names):
    top5[p] = [{"class": int(c), "name": labels[i][k], "probability": round(float(prob[i, k]), 4)}
               for k, c in enumerate(idx[i])]
    log(f"[demo] {p}: {labels[i][0]} ({prob[i, 0]:.2f})")
  image_size = int(x.shape[1])
  boxes, has_box, gt_record = _ground_truth(photo_lib, photo_names, targets, image_size)
  for p, r in gt_record.items():
    if not r["used"]:
      log(f"[demo] {p}: the box is for class {r['class']} ({r['class_name']}), the model's top class"
          f" is {top5[p][0]['class']}: left out of the pointing games")
  from saljax.data import preprocessing
  # Overlay on what the model saw (the center crops), so maps line up.
  crops = preprocessing.display_crops(list(imgs.values()), image_size=image_size)
  judge_key = jax.random.key(1)
  shown_boxes = [b[b[:, 2] > b[:, 0]] for b in boxes]  # without the padding rows

  results: dict[str, dict[str, Any]] = {}
  maps: dict[str, Any] = {}
  judged: list[tuple[str, np.ndarray, np.ndarray]] = []  # (method, photos used, shown maps)
  order = method_order(names)
  for n, name in enumerate(order, start=1):
    entry = explainers.entry(name)
    rec: dict[str, Any] = {"kind": entry.kind, "family": entry.family, "year": entry.year,
                           "paper": _paper(entry), "stochastic": entry.stochastic}
    results[name] = rec
    prefix = f"[demo] [{n}/{len(order)}] {name}"
    if name in NOT_APPLICABLE:
      rec.update(status="not applicable", reason=NOT_APPLICABLE[name], photos=[])
      log(f"{prefix}: not applicable ({NOT_APPLICABLE[name]})")
      continue
    if name in ON_SUBSET:
      sel = np.array([p in subset[:ON_SUBSET[name]] for p in photo_names])
    else:
      sel = np.ones(len(x), bool)
    xs, ts = x[sel], targets[sel]
    rec["photos"] = [p for p, s in zip(photo_names, sel) if s]
    elapsed = time.perf_counter() - t_start
    if elapsed > budget_s:
      rec.update(status="failed", error=f"not run: the demo's time budget of {budget_s:.0f} s was"
                 f" spent after {elapsed:.0f} s (a slower or busier machine than 2 free cores?)")
      log(f"{prefix}: FAILED (time budget spent)")
      continue
    f, opts = _call_options(name, model, xs, table)
    rec["options"] = _printable(opts)
    try:
      rec["evaluations"] = entry.cost(f, xs, **{k: v for k, v in opts.items() if k != "key"})
    except Exception:  # the count is informative; the run below reports real errors
      rec["evaluations"] = None
    log(f"{prefix} on {len(xs)} photo(s) ...")
    t0 = time.perf_counter()
    try:
      a = explainers.get(name)(f, xs, ts, **opts)
      a = np.asarray(jax.block_until_ready(a), np.float32)
    except Exception as e:  # reported in summary.json; the demo goes on
      rec.update(status="failed", seconds=round(time.perf_counter() - t0, 2),
                 error=f"{type(e).__name__}: {str(e)[:500]}")
      log(f"{prefix}: FAILED {rec['error'][:200]}")
      continue
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    rec["shape"] = list(a.shape)
    if not np.isfinite(a).all():
      rec.update(status="failed", error="non-finite values in the attribution")
      log(f"{prefix}: FAILED (non-finite values)")
      continue
    shown = viz.shown_values(a, name, shape=(image_size, image_size))
    flat = [p for p, m in zip(rec["photos"], shown) if np.ptp(m) <= 1e-12 * max(np.abs(m).max(), 1e-30)]
    if flat:
      rec.update(status="failed", error=f"constant map on {flat}: not an explanation")
      log(f"{prefix}: FAILED (constant map on {flat})")
      continue
    judged.append((name, sel, shown))
    rec["status"] = "ok"
    full = [None] * len(x)
    for i, j in enumerate(np.flatnonzero(sel)):
      full[j] = a[i]
    maps[name] = full
    C.atomic_write(out / "maps" / f"{name}.npz", lambda p: np.savez_compressed(
        p, attribution=a, targets=ts, photos=np.array(rec["photos"])))
    # The card's picture: the method's photos (with their boxes) over its maps.
    used = np.flatnonzero(sel)
    viz.grid([crops[j] for j in used], {name: list(a)}, out / "rows" / f"{name}.png", legend=False,
             by_family=False, cell=1.3, dpi=70, boxes=[shown_boxes[j] for j in used])
    rec["image"] = f"rows/{name}.png"
    log(f"{prefix}: {rec['seconds']:.1f} s")

  # All maps are judged together: one compile per metric and large batches
  # (one call per method compiled again for every subset size).
  judge_s = None
  if judged:
    log(f"[demo] judging {len(judged)} methods: pointing games, deletion and insertion")
    t1 = time.perf_counter()
    rows = np.concatenate([np.flatnonzero(sel) for _, sel, _ in judged])
    scores, curves = judge(model, x[rows], targets[rows], np.concatenate([m for *_, m in judged]),
                           boxes[rows], has_box[rows], judge_key)
    judge_s = round(time.perf_counter() - t1, 1)
    start = 0
    for name, sel, _ in judged:
      rec, k = results[name], int(sel.sum())
      part = slice(start, start + k)
      start += k
      rec["scores"] = {m: _mean(v[part]) for m, v in scores.items()}
      rec["per_photo"] = {p: {m: (None if not np.isfinite(v[part][i]) else round(float(v[part][i]), 4))
                              for m, v in scores.items()} for i, p in enumerate(rec["photos"])}
      rec["curves"] = {m: np.round(c[part].mean(0), 4).tolist() for m, c in curves.items()}
    log(f"[demo] judged in {judge_s:.0f} s")

  log("[demo] drawing grid.png")
  titles = [f"{p}\n{labels[i][0].split(',')[0]} {prob[i, 0]:.2f}" for i, p in enumerate(photo_names)]
  # Rows grouped by family with each method's default display (the registry's);
  # a method that failed keeps its row, drawn "n/a".
  missing = {n: None for n, r in results.items() if r["status"] == "failed"}
  viz.grid(crops, {**maps, **missing}, out / "grid.png", titles=titles, cell=1.6, dpi=80,
           boxes=shown_boxes)

  counts: dict[str, int] = {}
  for rec in results.values():
    counts[rec["status"]] = counts.get(rec["status"], 0) + 1
  summary = {
      "model": model_name,
      "device": f"{jax.default_backend()} ({jax.devices()[0].device_kind}), {os.cpu_count()} cores,"
                f" {platform.machine()}",
      "saljax_version": saljax.__version__,
      "depthwise_impl": models.depthwise_impl(),
      "photos": top5,
      "targets": {p: int(t) for p, t in zip(photo_names, targets)},
      "subset": list(subset),
      "ground_truth": {"file": "saljax/data/bundled_boxes.json",
                       "how": photo_lib._load_boxes()["about"], "boxes": gt_record},
      "metrics": {k: {**v, "direction": report.direction_of(k)} for k, v in report.DEFAULT_METRICS.items()},
      "judge": {"steps": JUDGE_STEPS, "maps": "saljax.viz.shown_values (the grid's display)",
                "seconds": judge_s},
      "images": {"grid": "grid.png"},
      "methods": results,
      "counts": counts,
      "budget_s": budget_s,
  }
  summary["total_seconds"] = round(time.perf_counter() - t_start, 1)
  C.atomic_write(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=1)))
  if page:
    report.write(out, summary)
  for line in table_lines(summary):
    log(line)
  log(f"[demo] done in {summary['total_seconds']:.0f} s: {counts}; wrote {out}/summary.json,"
      f" {out}/grid.png" + (f", {out}/index.html" if page else ""))
  return summary


def main():
  from absl import app, flags

  workdir = flags.DEFINE_string("workdir", "runs/demo", "Output directory.")
  photos = flags.DEFINE_list("photos", None, "Bundled photos to explain (default: all).")
  methods = flags.DEFINE_list("methods", None, "Explainers to run (default: all registered).")
  budget = flags.DEFINE_float("budget_s", 600.0, "Methods that would start after this many seconds"
                              " fail (reported) instead of running.")
  model = flags.DEFINE_string("model", "efficientnet_lite0", "Pretrained model name.")

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO
    summary = run(workdir.value, photos=photos.value, methods=methods.value, budget_s=budget.value,
                  model_name=model.value)
    failed = [n for n, r in summary["methods"].items() if r["status"] == "failed"]
    if failed:
      print(f"[demo] FAILED methods: {failed} (see summary.json)", file=sys.stderr)
      sys.exit(1)

  app.run(_main)


if __name__ == "__main__":
  main()
