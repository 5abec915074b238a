"""LRP conservation on the pretrained EfficientNet-Lite0, per rule preset and depthwise form.

    python -m experiments.lrp_conservation [--photo=chelsea] [--rules=epsilon,epsilon_gamma_box]
        [--impls=xla,shifts] [--out=lrp.jsonl]

For each rule preset (default: all of `saljax.explainers.propagation.PRESETS`)
and each depthwise formulation (XLA's grouped convolution and the CPU
"shifts" form), explains the model's top class on one bundled photo and
prints the target logit, the input relevance, the delta that `lrp(...,
return_delta=True)` reports (input relevance + relevance absorbed by biases,
batch-norm shifts and stabilizers - logit; 0 for a conserving rule), the
time including compilation, and, with both forms, the largest difference
between their maps. The issue this answers: before canonization, `epsilon`
and `zero` gave NaN here and the default rules a relevance sum of -125 for a
logit of 8.9.
"""
from __future__ import annotations

import json
import time


def measure(photo: str = "chelsea", rules: tuple[str, ...] | None = None,
            impls: tuple[str, ...] = ("xla", "shifts")) -> list[dict]:
  import jax.numpy as jnp
  import numpy as np
  from jax.tree_util import Partial

  import saljax
  from saljax.explainers import propagation

  model = saljax.models.load_pretrained("efficientnet_lite0")
  x = model.preprocess(saljax.data.photos()[photo][None])
  logits = model(x)
  target = jnp.argmax(logits, -1)
  logit = float(logits[0, target[0]])
  rules = tuple(sorted(propagation.PRESETS)) if rules is None else tuple(rules)
  rows, maps = [], {}
  for impl in impls:
    module = model.module.clone(impl=impl)
    f = Partial(module.apply, model.params)  # parameters as data: one compile per preset
    for r in rules:
      t0 = time.perf_counter()
      relevance, delta = saljax.lrp(f, x, target, rules=r, return_delta=True)
      relevance = np.asarray(relevance)
      seconds = time.perf_counter() - t0
      maps[impl, r] = relevance
      rows.append({"rules": r, "impl": impl, "logit": logit,
                   "input_relevance": float(relevance.sum()), "delta": float(delta[0]),
                   "relative_delta": abs(float(delta[0])) / abs(logit),
                   "finite": bool(np.isfinite(relevance).all()), "seconds": round(seconds, 1)})
  if len(impls) == 2:
    for row in rows:
      a, b = maps[impls[0], row["rules"]], maps[impls[1], row["rules"]]
      row["max_abs_diff_between_impls"] = float(np.abs(a - b).max())
      row["map_max"] = float(np.abs(a).max())
  return rows


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  rows = measure(f.photo, tuple(f.rules) if f.rules else None, tuple(f.impls))
  print(f"{'rules':28s} {'impl':6s} {'logit':>7s} {'input R':>9s} {'delta':>10s} {'rel':>8s}"
        f" {'xla-shifts':>10s} {'s':>6s}")
  for r in rows:
    print(f"{r['rules']:28s} {r['impl']:6s} {r['logit']:7.3f} {r['input_relevance']:9.4f}"
          f" {r['delta']:10.2e} {r['relative_delta']:8.1e}"
          f" {r.get('max_abs_diff_between_impls', float('nan')):10.1e} {r['seconds']:6.1f}")
  if f.out:
    with open(f.out, "w") as fh:
      for r in rows:
        fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("photo", "chelsea", "bundled photo (saljax.data.photos())")
  flags.DEFINE_list("rules", None, "rule presets (default: all)")
  flags.DEFINE_list("impls", ["xla", "shifts"], "depthwise formulations")
  flags.DEFINE_string("out", None, "JSON lines output")
  app.run(main)
