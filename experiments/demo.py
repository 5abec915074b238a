"""The real demo: every registered explainer on the pretrained EfficientNet-Lite0
and every bundled photo.

    python -m experiments.demo --workdir=runs/demo        (what `make demo` runs)

Converts the PyTorch weights once (cached under ``$SALJAX_CACHE``), classifies
the six bundled photos, explains each photo's top-1 class with every method in
`saljax.explainers.names()`, and writes to the workdir:

    summary.json          model, device, each photo's top-5 classes, and for each
                          method its status (ok / failed / skipped / not
                          applicable), seconds (compile included), options
    maps/<method>.npz     attribution (pixel methods: [N, 224, 224, 3]; layer
                          methods: [N, h, w]), targets, photo names
    grid.png              overlays, one row per method, one column per photo

It is sized to finish in under 10 minutes on a 2-core CPU: sampling and path
methods run with reduced steps/samples (`DEMO_OPTIONS`, recorded in the
summary), all photos go through each method as one batch (one compile per
method), and once `budget_s` is spent the remaining methods are skipped and
reported. A method that raises is reported, not fatal.
"""
from __future__ import annotations

import json
import os
import pathlib
import platform
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from experiments import _common as C

# Reduced settings so every method fits the demo's time budget on a CPU; the
# library defaults (papers' values) are in each explainer's docstring.
DEMO_OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": dict(steps=8),
    "blur_ig": dict(steps=8),
    "guided_ig": dict(steps=8),
    "smoothgrad": dict(samples=4),
    "squaregrad": dict(samples=4),
    "vargrad": dict(samples=4),
    "expected_gradients": dict(samples=4),
    "gradient_shap": dict(samples=4),
    "xrai": dict(steps=8),
    "occlusion": dict(window=32, stride=32),
    "rise": dict(masks=128),
    "hsic": dict(samples=64),
    "sobol": dict(grid=4, designs=8),
    "kernel_shap": dict(samples=64),
    "lime": dict(samples=64),
    "shapley_sampling": dict(samples=1),
    "extremal_perturbation": dict(iterations=20),
    # 16 superpixels instead of 50 and a 4-long shortlist: LiMA's greedy search
    # evaluates the model for every candidate region at every step.
    "lima": dict(segmentation_options={"n_segments": 16}, pending=4),
    # 320 channels instead of the head's 1280: Score-CAM runs one forward pass per channel.
    "scorecam": dict(layer="blocks_15", batch_size=64),
}
# Methods whose references are the demo's photos (input space).
NEEDS_REFERENCES = ("expected_gradients", "gradient_shap")
# ViT-only methods: the pretrained model is a CNN.
NOT_APPLICABLE = {
    "attention_rollout": "needs a ViT's attention maps; the pretrained model is a CNN",
    "class_token_attention": "needs a ViT's class token; the pretrained model is a CNN",
    "vit_gradcam": "needs ViT tokens; the pretrained model is a CNN",
}
# Run last: many model evaluations per example, so the cheap methods finish first.
SLOW_LAST = ("integrated_gradients", "expected_gradients", "occlusion", "rise", "kernel_shap", "lime",
             "hsic", "sobol", "shapley_sampling", "xrai", "extremal_perturbation", "blur_ig",
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


def run(workdir: str, *, photos: Sequence[str] | None = None, methods: Sequence[str] | None = None,
        model_name: str = "efficientnet_lite0", budget_s: float = 540.0,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        log: Callable[[str], None] = print, compilation_cache: bool = True) -> dict[str, Any]:
  """Runs the demo and returns the summary (also written to ``summary.json``).

  Args:
    workdir: output directory (created).
    photos: names of bundled photos (default: all six).
    methods: explainer names (default: every registered explainer).
    model_name: a `saljax.models.load_pretrained` name.
    budget_s: once this many seconds have passed since the start, remaining
      methods are skipped (reported as such).
    options: per-method keyword options replacing `DEMO_OPTIONS` entries.
    log: progress printer.
    compilation_cache: turn on JAX's persistent compilation cache (a global
      setting) under ``$SALJAX_CACHE/jax``, so a second demo compiles less.
  """
  import importlib

  import saljax
  from saljax import explainers, models, viz
  photo_lib = importlib.import_module("saljax.data.bundled_photos")

  t_start = time.perf_counter()
  if compilation_cache:
    _enable_compilation_cache()
  out = pathlib.Path(workdir)
  (out / "maps").mkdir(parents=True, exist_ok=True)
  table = {**DEMO_OPTIONS, **{k: dict(v) for k, v in (options or {}).items()}}
  names = list(explainers.names()) if methods is None else list(methods)
  unknown = [n for n in names if n not in explainers.names()]
  if unknown:
    raise ValueError(f"methods: unknown explainer(s) {unknown}; registered: {explainers.names()}")

  log(f"[demo] loading {model_name} (the first run converts the PyTorch weights)")
  model = models.load_pretrained(model_name, verbose=True)
  imgs = photo_lib.photos(photos)
  photo_names = list(imgs)
  x = model.preprocess(list(imgs.values()))
  idx, prob, labels = model.top_k(x, 5)
  targets = idx[:, 0].astype(np.int32)
  top5 = {}
  for i, p in enumerate(photo_names):
    top5[p] = [{"class": int(c), "name": labels[i][k], "probability": round(float(prob[i, k]), 4)}
               for k, c in enumerate(idx[i])]
    log(f"[demo] {p}: {labels[i][0]} ({prob[i, 0]:.2f})")

  results: dict[str, dict[str, Any]] = {}
  maps: dict[str, np.ndarray | None] = {}
  order = method_order(names)
  for n, name in enumerate(order, start=1):
    entry = explainers.entry(name)
    rec: dict[str, Any] = {"kind": entry.kind, "stochastic": entry.stochastic}
    results[name] = rec
    prefix = f"[demo] [{n}/{len(order)}] {name}"
    if name in NOT_APPLICABLE:
      rec.update(status="not applicable", reason=NOT_APPLICABLE[name])
      log(f"{prefix}: not applicable ({NOT_APPLICABLE[name]})")
      continue
    elapsed = time.perf_counter() - t_start
    if elapsed > budget_s:
      rec.update(status="skipped", reason=f"time budget of {budget_s:.0f} s spent")
      log(f"{prefix}: skipped (time budget)")
      continue
    f, opts = _call_options(name, model, x, table)
    rec["options"] = _printable(opts)
    log(f"{prefix} ...")
    t0 = time.perf_counter()
    try:
      a = explainers.get(name)(f, x, targets, **opts)
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
    rec["status"] = "ok"
    maps[name] = a
    C.atomic_write(out / "maps" / f"{name}.npz", lambda p: np.savez_compressed(
        p, attribution=a, targets=targets, photos=np.array(photo_names)))
    log(f"{prefix}: {rec['seconds']:.1f} s, shape {tuple(a.shape)}")

  log("[demo] drawing grid.png")
  titles = [f"{p}\n{labels[i][0].split(',')[0]} {prob[i, 0]:.2f}" for i, p in enumerate(photo_names)]
  # Overlay on what the model saw (the 224 px center crops), so maps line up.
  from saljax.data import preprocessing
  crops = preprocessing.display_crops(list(imgs.values()), image_size=x.shape[1])
  # Rows grouped by family with each method's default display (the registry's);
  # a method that failed or was skipped keeps its row, drawn "n/a".
  missing = {n: None for n, r in results.items() if r["status"] in ("failed", "skipped")}
  viz.grid(crops, {**maps, **missing}, out / "grid.png", titles=titles, cell=1.6, dpi=80)

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
      "methods": results,
      "counts": counts,
      "note": "reduced steps/samples for a CPU demo; see each method's options",
      "total_seconds": round(time.perf_counter() - t_start, 1),
  }
  C.atomic_write(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=1)))
  log(f"[demo] done in {summary['total_seconds']:.0f} s: {counts}; wrote {out}/summary.json,"
      f" {out}/grid.png, {out}/maps/")
  return summary


def main():
  from absl import app, flags

  workdir = flags.DEFINE_string("workdir", "runs/demo", "Output directory.")
  photos = flags.DEFINE_list("photos", None, "Bundled photos to explain (default: all).")
  methods = flags.DEFINE_list("methods", None, "Explainers to run (default: all registered).")
  budget = flags.DEFINE_float("budget_s", 540.0, "Skip remaining methods after this many seconds.")
  model = flags.DEFINE_string("model", "efficientnet_lite0", "Pretrained model name.")

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO
    run(workdir.value, photos=photos.value, methods=methods.value, budget_s=budget.value,
        model_name=model.value)

  app.run(_main)


if __name__ == "__main__":
  main()
