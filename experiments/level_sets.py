"""Blind spots of a small CNN: Level Set Traversal (Balasubramanian et al.
2023, arXiv:2310.19889) from test images towards images of other classes,
with the confidence along each path and along the straight segments back to
the source.

    python -m experiments.level_sets --config=experiments/configs/level_sets.py \
        --workdir=runs/level_sets

The model is trained as in `experiments.robustness` (a `saljax.models.cnn` on
planted-shapes images, labelled by colour). Sources: the first ``lst.pairs``
test images; each one's target: a random test image of another class (seeded).
`saljax.blindspots.level_set_traversal` walks from source to target holding
the source class's confidence; per pair we record the confidence at the
start and end, whether the source class is still predicted, SSIM and L2 to
the target (also for the source itself: how far the walk went), and the
lowest confidence on the straight segment from the source to the found input
(`segment_confidence`: star-like level sets keep it high).

Writes ``level_sets.jsonl`` (one line per pair, then a ``{"summary": ...}``
line: the share of pairs that keep the source class within 5% of its
confidence with SSIM to the target above 0.8, the issue's criterion, and
medians) and ``level_sets.png`` (confidence along the paths, along the
segments, the distance to the target along the paths, and three examples).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import _common as C
from experiments import robustness as R
from saljax import blindspots


def pairs(config, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Source indices (the first ``lst.pairs``) and a target of another class for each."""
  n = int(config.lst.pairs)
  if n > len(y):
    raise ValueError(f"lst.pairs: expected at most data.n_test = {len(y)}, got {n}")
  rng = np.random.default_rng([int(config.seed), 7])
  tgt = [int(rng.choice(np.flatnonzero(y != y[i]))) for i in range(n)]
  return np.arange(n), np.asarray(tgt)


def perceptual(config, a, b) -> np.ndarray | None:
  """LPIPS-style distance (`blindspots.feature_distance`) of each pair under
  the pretrained ``lst.feature_model`` at ``lst.feature_size`` px, on its
  ``lst.feature_layers``; None when ``lst.feature_model`` is empty. The [0, 1]
  images are resized bilinearly and normalized as the model's own
  preprocessing does."""
  c = config.lst
  if not c.feature_model:
    return None
  from saljax.models import pretrained
  clf = pretrained.load_pretrained(c.feature_model)
  spec = pretrained._spec(c.feature_model)
  mean, std = jnp.asarray(spec.mean), jnp.asarray(spec.std)
  s = int(c.feature_size)

  def prep(z):
    z = jax.image.resize(z, (z.shape[0], s, s, z.shape[-1]), "bilinear")
    return (z * 255.0 - mean) / std

  return np.asarray(blindspots.feature_distance(clf, prep(a), prep(b), tuple(c.feature_layers),
                                                batch_size=int(c.batch_size)))


def measure(config, f, x: np.ndarray, y: np.ndarray) -> tuple[list[dict], dict, dict]:
  """Runs LST on the config's pairs; returns (per-pair rows, summary, arrays for the figure)."""
  c = config.lst
  si, ti = pairs(config, y)
  src, tgt = jnp.asarray(x[si]), jnp.asarray(x[ti])
  t0 = time.perf_counter()
  end, info = blindspots.level_set_traversal(f, src, tgt, steps=int(c.steps),
                                             step_size=float(c.step_size),
                                             correction=float(c.correction), method=c.method,
                                             pthresh=float(c.pthresh),
                                             adv_step_size=float(c.adv_step_size),
                                             init_noise=float(c.init_noise),
                                             key=jax.random.key(int(config.seed)),
                                             batch_size=int(c.batch_size))
  conf = np.asarray(info["confidence"])
  seconds = time.perf_counter() - t0
  label = np.asarray(info["label"])
  pred = np.asarray(jnp.argmax(f(end), -1))
  seg = np.asarray(blindspots.segment_confidence(f, src, end, label, points=int(c.segment_points),
                                                 batch_size=int(c.batch_size)))
  ssim_end = np.asarray(blindspots.ssim(end, tgt))
  ssim_src = np.asarray(blindspots.ssim(src, tgt))
  feat_end, feat_src = perceptual(config, end, tgt), perceptual(config, src, tgt)
  l2 = np.asarray(info["l2_to_target"])
  rows = []
  for k in range(len(si)):
    held = bool(pred[k] == label[k] and abs(conf[k, -1] - conf[k, 0]) <= 0.05 * conf[k, 0])
    rows.append({"source": int(si[k]), "target": int(ti[k]), "source_class": int(label[k]),
                 "source_true_class": int(y[si[k]]), "target_class": int(y[ti[k]]),
                 "start_confidence": float(conf[k, 0]), "end_confidence": float(conf[k, -1]),
                 "min_path_confidence": float(conf[k].min()), "end_predicted": int(pred[k]),
                 "held": held, "ssim_source_target": float(ssim_src[k]),
                 "ssim_end_target": float(ssim_end[k]), "l2_source_target": float(l2[k, 0]),
                 "l2_end_target": float(l2[k, -1]), "min_segment_confidence": float(seg[k].min()),
                 **({"lpips_source_target": float(feat_src[k]), "lpips_end_target": float(feat_end[k])}
                    if feat_end is not None else {}),
                 "criterion": bool(held and ssim_end[k] > 0.8)})
  summary = {"summary": True, "pairs": len(rows),
             "criterion_rate": float(np.mean([r["criterion"] for r in rows])),
             "held_rate": float(np.mean([r["held"] for r in rows])),
             "median_ssim_end_target": float(np.median(ssim_end)),
             "median_ssim_source_target": float(np.median(ssim_src)),
             "median_l2_end_over_start": float(np.median(l2[:, -1] / l2[:, 0])),
             **({"median_lpips_end_target": float(np.median(feat_end)),
                 "median_lpips_source_target": float(np.median(feat_src))}
                if feat_end is not None else {}),
             "median_min_segment_confidence": float(np.median(seg.min(1))),
             "median_start_confidence": float(np.median(conf[:, 0])),
             "method": c.method, "steps": int(c.steps), "step_size": float(c.step_size),
             "correction": float(c.correction), "seconds": round(seconds, 2)}
  arrays = {"conf": conf, "seg": seg, "l2": l2, "src": np.asarray(src), "tgt": np.asarray(tgt),
            "end": np.asarray(end), "ssim_end": ssim_end}
  return rows, summary, arrays


def figure(arrays: dict, summary: dict, title: str = ""):
  """Confidence along paths and segments, distance to target, three examples."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.gridspec import GridSpec

  fig = plt.figure(figsize=(11, 5.4), constrained_layout=True)
  gs = GridSpec(2, 9, figure=fig, height_ratios=[1.5, 1])
  conf, seg, l2 = arrays["conf"], arrays["seg"], arrays["l2"]
  steps = np.arange(conf.shape[1])
  ax = fig.add_subplot(gs[0, 0:3])
  # Relative to the start: the criterion is a +-5% band, and the confidences
  # of a trained model sit near 1 where an absolute axis shows nothing.
  rel_conf = conf / conf[:, :1]
  ax.axhspan(0.95, 1.05, color="tab:blue", alpha=0.08, label="start +-5%")
  ax.plot(steps, rel_conf.T, color="tab:blue", alpha=0.3, lw=0.8)
  ax.plot(steps, np.median(rel_conf, 0), color="k", lw=1.5, label="median")
  lo = min(0.9, float(rel_conf.min()) - 0.02)
  hi = max(1.1, float(rel_conf.max()) + 0.02)
  ax.set(xlabel="LST step", ylabel="confidence / confidence at start", ylim=(lo, hi),
         title="along the LST paths")
  ax.legend(loc="lower left", fontsize=8)
  ax = fig.add_subplot(gs[0, 3:6])
  t = np.linspace(0, 1, seg.shape[1])
  ax.plot(t, seg.T, color="tab:green", alpha=0.25, lw=0.8)
  ax.plot(t, np.median(seg, 0), color="k", lw=1.5, label="median")
  ax.set(xlabel="t  (source + t (found - source))", ylabel="source-class confidence",
         ylim=(-0.02, 1.02), title="along straight segments")
  ax.legend(loc="lower left", fontsize=8)
  ax = fig.add_subplot(gs[0, 6:9])
  rel = l2 / l2[:, :1]
  ax.plot(steps, rel.T, color="tab:orange", alpha=0.25, lw=0.8)
  ax.plot(steps, np.median(rel, 0), color="k", lw=1.5, label="median")
  ax.set(xlabel="LST step", ylabel="L2 to target / at start", ylim=(0, 1.05),
         title="distance to the target")
  ax.legend(loc="upper right", fontsize=8)
  for k in range(min(3, len(conf))):
    for j, (name, img) in enumerate((("source", arrays["src"][k]), ("target", arrays["tgt"][k]),
                                     ("found", arrays["end"][k]))):
      ax = fig.add_subplot(gs[1, 3 * k + j])
      ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if name == "source":
        ax.set_title(f"source {conf[k, 0]:.3f}", fontsize=8)
      elif name == "target":
        ax.set_title("target", fontsize=8)
      else:
        ax.set_title(f"found {conf[k, -1]:.3f}\nSSIM {arrays['ssim_end'][k]:.2f}", fontsize=8)
  fig.suptitle(title or (f"Level Set Traversal: {summary['pairs']} pairs,"
                         f" {summary['criterion_rate']:.0%} keep the source class within 5% of"
                         f" its confidence with SSIM to the target > 0.8"), fontsize=10)
  return fig


def run(config, workdir: str) -> dict[str, Any]:
  workdir = C.check_workdir(workdir)
  if config.lst.feature_model:  # a wrong name or layer fails here, before training
    from saljax import model as M
    from saljax.models import pretrained
    M.check_layers(pretrained.load_pretrained(config.lst.feature_model).tapped,
                   tuple(config.lst.feature_layers))
  f, acc = R.train_model(config)
  x, y = R.shapes_data(config, "test")
  rows, summary, arrays = measure(config, f, x, y)
  summary["test_accuracy"] = acc
  logging.info("%s", summary)
  C.atomic_write_text(os.path.join(workdir, "level_sets.jsonl"),
                      "".join(json.dumps(r) + "\n" for r in rows + [summary]))
  fig = figure(arrays, summary)
  C.save_figure(fig, os.path.join(workdir, "level_sets.png"), dpi=100)
  return {"rows": rows, "summary": summary}


if __name__ == "__main__":
  C.app_main(run)
