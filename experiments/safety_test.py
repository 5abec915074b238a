"""Feature-guided black-box safety testing (Wicker, Huang, Kwiatkowska 2018,
TACAS, arXiv:1710.07859) of a small CNN on scikit-learn's 8x8 digits: MCTS
over the feature game against random search at the same query budget.

    python -m experiments.safety_test --config=experiments/configs/safety_test.py \
        --workdir=runs/safety [--config.search.max_queries=500]

Trains the CNN (`train_digits_cnn`, a few seconds), then runs
`saljax.safety.feature_guided_search` and `saljax.safety.random_search` on the
first `n_images` held-out digits with the same key, budget, `max_pixels` and
``+-tau`` manipulations. Writes to the workdir:

- ``safety.jsonl``: one line per method (success rate, median/mean L0 and L2
  over the successes, median L0 counting failures as ``max_pixels + 1``, mean
  queries, seconds) and one line per image and method;
- ``safety_table.md``: the table of the per-method lines;
- ``safety_examples.png``: original / MCTS adversarial / changed pixels /
  random-search adversarial for a few images.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from experiments import _common as C


def _init(key):
  import jax
  import jax.numpy as jnp
  k = jax.random.split(key, 3)
  return {"c1": jax.random.normal(k[0], (3, 3, 1, 8)) / 3.0, "b1": jnp.zeros(8),
          "c2": jax.random.normal(k[1], (3, 3, 8, 16)) / jnp.sqrt(72.0), "b2": jnp.zeros(16),
          "d": jax.random.normal(k[2], (4 * 4 * 16, 10)) / 16.0, "bd": jnp.zeros(10)}


def digits_cnn_apply(params, x):
  """Two 3x3 convolutions (8 and 16 channels, the second stride 2), ReLU, a
  dense layer to 10 logits; ``x: [N, 8, 8, 1]`` in [0, 1]."""
  import jax
  dn = ("NHWC", "HWIO", "NHWC")
  h = jax.nn.relu(jax.lax.conv_general_dilated(x, params["c1"], (1, 1), "SAME", dimension_numbers=dn)
                  + params["b1"])
  h = jax.nn.relu(jax.lax.conv_general_dilated(h, params["c2"], (2, 2), "SAME", dimension_numbers=dn)
                  + params["b2"])
  return h.reshape(h.shape[0], -1) @ params["d"] + params["bd"]


def train_digits_cnn(seed: int = 0, n_train: int = 1400, steps: int = 300,
                     learning_rate: float = 1e-2):
  """Trains `digits_cnn_apply` with full-batch Adam on the first `n_train` of
  scikit-learn's digits (scaled to [0, 1]). Returns ``(model, x_test, y_test,
  accuracy)`` with ``model = Partial(digits_cnn_apply, params)`` (a pytree,
  so new weights reuse compiled searches). The defaults reach about 0.92
  test accuracy in a few seconds of CPU."""
  import jax
  import jax.numpy as jnp
  import optax
  from jax.tree_util import Partial
  from sklearn.datasets import load_digits

  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)[..., None]
  y = d.target.astype(np.int32)
  xt, yt = jnp.asarray(x[:n_train]), jnp.asarray(y[:n_train])
  params = _init(jax.random.key(seed))
  opt = optax.adam(learning_rate)

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(digits_cnn_apply(p, xt), yt).mean()

  def step(carry, _):
    p, s = carry
    g = jax.grad(loss)(p)
    u, s = opt.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  (params, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), None, length=steps))(params)
  model = Partial(digits_cnn_apply, params)
  acc = float((np.asarray(jnp.argmax(model(jnp.asarray(x[n_train:])), -1)) == y[n_train:]).mean())
  return model, x[n_train:], y[n_train:], acc


def summarize(result, max_pixels: int) -> dict[str, Any]:
  """Success rate, L0/L2 statistics and queries of a `SafetyResult`."""
  ok = result.success
  l0 = np.where(ok, result.l0, max_pixels + 1)
  return {"success_rate": float(ok.mean()),
          "median_l0_successes": float(np.median(result.l0[ok])) if ok.any() else None,
          "mean_l0_successes": float(result.l0[ok].mean()) if ok.any() else None,
          "median_l0_failures_as_max_plus_1": float(np.median(l0)),
          "median_l2_successes": float(np.median(result.l2[ok])) if ok.any() else None,
          "mean_queries": float(result.queries.mean())}


def _png(path, x, mcts, rnd, rows: int):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  # Successes first (they have something to show), then the rest.
  idx = sorted(range(len(x)), key=lambda i: not mcts.success[i])[:rows]
  fig, axes = plt.subplots(len(idx), 4, figsize=(6.4, 1.7 * len(idx)), squeeze=False)
  for r, i in enumerate(idx):
    change = mcts.adversarial[i, ..., 0] - x[i, ..., 0]  # signed: white where untouched
    panels = [(x[i, ..., 0], f"original: {mcts.label[i]}", "gray"),
              (mcts.adversarial[i, ..., 0], f"MCTS: {mcts.adversarial_label[i]}, L0={int(mcts.l0[i])}"
               if mcts.success[i] else "MCTS: none", "gray"),
              (change, "change: red +, blue -", "bwr"),
              (rnd.adversarial[i, ..., 0],
               f"random: {rnd.adversarial_label[i]}, L0={int(rnd.l0[i])}" if rnd.success[i]
               else "random: none", "gray")]
    for a, (img, title, cmap) in zip(axes[r], panels):
      lo = -1 if cmap == "bwr" else 0
      a.imshow(img, cmap=cmap, vmin=lo, vmax=1, interpolation="nearest")
      a.set_title(title, fontsize=8)
      a.set_xticks([])
      a.set_yticks([])
  fig.tight_layout()
  C.save_figure(fig, path, dpi=100)


def run(config, workdir: str) -> dict[str, Any]:
  import jax

  from saljax import safety

  workdir = C.check_workdir(workdir)
  t0 = time.perf_counter()
  model, x, y, acc = train_digits_cnn(config.seed, **config.train)
  train_s = time.perf_counter() - t0
  x = x[:config.n_images]
  common = dict(max_queries=config.search.max_queries, max_pixels=config.search.max_pixels,
                tau=config.search.tau, manipulation=config.search.manipulation,
                backtrack=config.search.backtrack)
  t0 = time.perf_counter()
  sal = [safety.sift_saliency(img, **config.sift) for img in x]
  sift_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  mcts = safety.feature_guided_search(model, x, key=jax.random.key(config.seed), saliency=sal,
                                      **common, **config.mcts)
  mcts_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  rnd = safety.random_search(model, x, key=jax.random.key(config.seed), **common, **config.random)
  rnd_s = time.perf_counter() - t0
  k = config.search.max_pixels
  # Image by image: does MCTS need fewer, as many or more pixels (failure = k + 1)?
  a, b = (np.where(r.success, r.l0, k + 1) for r in (mcts, rnd))
  paired = [int((a < b).sum()), int((a == b).sum()), int((a > b).sum())]
  rows = [dict(method="mcts", **summarize(mcts, k), seconds=round(mcts_s + sift_s, 1),
               sift_fallbacks=int(sum(s.fallback for s in sal)), paired_fewer_equal_more=paired,
               reward=config.mcts.reward),
          dict(method="random", **summarize(rnd, k), seconds=round(rnd_s, 1))]
  for row in rows:
    row.update(n_images=len(x), test_accuracy=acc, train_seconds=round(train_s, 1), seed=config.seed,
               sift=dict(config.sift), **common)
  lines = [json.dumps(r) for r in rows]
  for name, res in (("mcts", mcts), ("random", rnd)):
    for i in range(len(x)):
      lines.append(json.dumps({"method": name, "image": i, "label": int(res.label[i]),
                               "success": bool(res.success[i]),
                               "l0": int(res.l0[i]) if res.success[i] else None,
                               "l2": float(res.l2[i]) if res.success[i] else None,
                               "adversarial_label": int(res.adversarial_label[i]),
                               "queries": int(res.queries[i])}))
  C.atomic_write_text(os.path.join(workdir, "safety.jsonl"), "\n".join(lines) + "\n")
  fmt = lambda v: "-" if v is None else f"{v:.2f}"
  table = ["| method | success | median L0 | mean L0 | median L0 (fail = max+1) | median L2 | mean queries |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    table.append(f"| {r['method']} | {r['success_rate']:.2f} | {fmt(r['median_l0_successes'])} | "
                 f"{fmt(r['mean_l0_successes'])} | {r['median_l0_failures_as_max_plus_1']:.1f} | "
                 f"{fmt(r['median_l2_successes'])} | {r['mean_queries']:.0f} |")
  C.atomic_write_text(os.path.join(workdir, "safety_table.md"), "\n".join(table) + "\n")
  _png(os.path.join(workdir, "safety_examples.png"), x, mcts, rnd, config.examples)
  print("\n".join(table))
  return {"rows": rows}


if __name__ == "__main__":
  C.app_main(run)
