"""Shapley estimators against exact answers: squared error per model evaluation.

`shapley_error_rows` runs every Shapley estimator of saljax (KernelSHAP with
``sampling="kernel"``, ``"paired"``, ``"leverage"``; permutation sampling,
plain and antithetic; Owen values) and, when Captum is importable, Captum's
`KernelShap` on a torch twin with the same features and baseline, on two
models whose Shapley values are known exactly:

- ``closed_form``: a polynomial over 12 features (linear, pairwise and weak
  triple terms) with a fill baseline, whose Shapley values are analytic (each
  interaction of the expanded monomials splits equally among its members);
- ``cnn``: a small random CNN on a 16 x 16 image with 16 features (a 4 x 4
  grid of 4 x 4 cells), whose Shapley values come from enumerating all 2^16
  coalitions (``kernel_shap(exact=True)``).

Each estimator runs at a few budgets of model evaluations per example, on
`replicates` rows of one batch (example i draws from ``fold_in(key, i)``, so
the rows are independent runs). A row reports the mean squared error over
features and replicates, ``mse * evaluations`` (constant for a ``1/n``
estimator: lower is more accurate per evaluation) and, for saljax's sampling
estimators, the coverage of ``|error| < 1.96 stderr`` (about 0.95 when the
standard error is calibrated). Owen values are exact for their hierarchy, so
their error is their distance from the Shapley values (zero for games of order
2 at most), at their fixed cost.

Self-contained: the lead wires it into `experiments.benchmark`. Run
``python -m experiments._answers_shapley [rows.jsonl]`` to print the rows (and
write them, atomically, to the file when given).
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import saljax
from saljax.explainers import perturbation as P

ESTIMATORS = ("kernel", "paired", "leverage", "permutation", "antithetic")


# ----------------------------------------------------------------------------
# The closed-form model.


class Polynomial:
  """``v(x) = w.x + sum c x_i x_j + sum e x_i x_j x_k`` with analytic Shapley values."""

  def __init__(self, m: int = 12, seed: int = 0, triple_scale: float = 0.15):
    rng = np.random.default_rng(seed)
    self.m = m
    self.w = rng.normal(size=m)
    idx = rng.permutation(m)
    self.pairs = [(int(idx[i]), int(idx[(i + 1) % m]), float(rng.normal())) for i in range(m)]
    self.triples = [(i, (i + 4) % m, (i + 7) % m, float(triple_scale * rng.normal()))
                    for i in range(m)]
    self.x = rng.normal(size=m)
    self.fill = 0.5 * rng.normal(size=m)

  def value(self, x, lib=jnp):
    out = x @ lib.asarray(self.w, dtype=x.dtype)
    for i, j, c in self.pairs:
      out = out + c * x[:, i] * x[:, j]
    for i, j, k, e in self.triples:
      out = out + e * x[:, i] * x[:, j] * x[:, k]
    return out

  def logits(self, x):
    v = self.value(x)
    return jnp.stack([v, -v], -1)

  def shapley(self) -> np.ndarray:
    """Exact Shapley values at `x` with baseline `fill` (``x_i = b_i + s_i d_i``
    expanded; each interaction splits equally among its members)."""
    x, b = self.x, self.fill
    d = x - b
    phi = self.w * d
    for i, j, c in self.pairs:
      phi[i] += c * d[i] * (b[j] + x[j]) / 2
      phi[j] += c * d[j] * (b[i] + x[i]) / 2
    for *t, e in self.triples:
      for i in t:
        j, k = [u for u in t if u != i]
        phi[i] += e * d[i] * (b[j] * b[k] + (d[j] * b[k] + b[j] * d[k]) / 2 + d[j] * d[k] / 3)
    return phi


# ----------------------------------------------------------------------------
# The small CNN and its torch twin.


def cnn_params(seed: int = 0, classes: int = 5) -> dict[str, np.ndarray]:
  """Weights of conv3x3(3->8) ReLU, conv3x3/2(8->16) ReLU, mean pool, dense(16->classes)."""
  rng = np.random.default_rng(seed)
  he = lambda *s: (rng.normal(size=s) * np.sqrt(2.0 / np.prod(s[:-1]))).astype(np.float32)
  return {"w1": he(3, 3, 3, 8), "b1": 0.1 * rng.normal(size=8).astype(np.float32),
          "w2": he(3, 3, 8, 16), "b2": 0.1 * rng.normal(size=16).astype(np.float32),
          "w3": he(16, classes), "b3": 0.1 * rng.normal(size=classes).astype(np.float32)}


def cnn_apply(params, x):
  """NHWC logits; explicit padding 1, as torch's ``padding=1``."""
  conv = lambda a, w, s: jax.lax.conv_general_dilated(
      a, w, (s, s), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  a = jax.nn.relu(conv(x, params["w1"], 1) + params["b1"])
  a = jax.nn.relu(conv(a, params["w2"], 2) + params["b2"])
  return a.mean((1, 2)) @ params["w3"] + params["b3"]


def torch_cnn(params):
  """The same network in torch (NCHW), for Captum."""
  import torch
  net = torch.nn.Sequential(
      torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
      torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
      torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, params["w3"].shape[1]))
  with torch.no_grad():
    for layer, w, b in ((net[0], "w1", "b1"), (net[2], "w2", "b2")):
      layer.weight.copy_(torch.from_numpy(params[w].transpose(3, 2, 0, 1).copy()))
      layer.bias.copy_(torch.from_numpy(params[b]))
    net[6].weight.copy_(torch.from_numpy(params["w3"].T.copy()))
    net[6].bias.copy_(torch.from_numpy(params["b3"]))
  return net.eval()


def grid_labels(size: int = 16, cells: int = 4) -> np.ndarray:
  """``[size, size]`` labels of a ``cells x cells`` grid."""
  r = np.arange(size) * cells // size
  return (r[:, None] * cells + r[None, :]).astype(np.int32)


# ----------------------------------------------------------------------------
# The runs.


def _saljax_run(name, f, x, fill, target, segments, n, m, key):
  """(map, stderr) of estimator `name` at about `n` evaluations per example."""
  common = dict(segments=segments, fill=fill, return_stderr=True)
  if name in ("kernel", "paired", "leverage"):
    samples = n - 2 if name == "kernel" else 2 * ((n - 2) // 2)
    return P.kernel_shap(f, x, target, key=key, samples=samples, sampling=name, **common)
  per = m + 1
  samples = n // per if name == "permutation" else 2 * max(2, n // (2 * per))
  return P.shapley_sampling(f, x, target, key=key, samples=samples,
                            antithetic=name == "antithetic", **common)


def _row(model, m, estimator, library, evaluations, errors, stderr=None, seconds=None):
  """One result row; `errors` ``[R, m]`` against the exact values."""
  per_rep = (errors ** 2).mean(1)
  row = {"model": model, "features": m, "estimator": estimator, "library": library,
         "evaluations": int(evaluations), "replicates": int(errors.shape[0]),
         "mse": float(per_rep.mean()),
         "mse_se": float(per_rep.std(ddof=1) / np.sqrt(len(per_rep))) if len(per_rep) > 1 else 0.0,
         "mse_times_evaluations": float(per_rep.mean() * evaluations)}
  if stderr is not None:
    row["coverage"] = float((np.abs(errors) < 1.96 * stderr + 1e-6).mean())
  if seconds is not None:
    row["seconds"] = round(seconds, 2)
  return row


def _per_feature(a, labels, m):
  """Per-feature values ``[B, m]`` of maps shaped like the input (first element of each group)."""
  a = np.asarray(a, np.float64)
  if labels is None:
    return a
  flat = a.reshape(a.shape[0], -1)
  lab = np.broadcast_to(labels[..., None], a.shape[1:]).reshape(-1)
  first = np.array([np.flatnonzero(lab == j)[0] for j in range(m)])
  return flat[:, first]


def _captum_kernel_shap(forward, x, fill, target, mask, n, replicates, seed):
  """Captum `KernelShap` per replicate (its own sampling, seeded per replicate): ``[R, m]``."""
  import torch
  from captum.attr import KernelShap
  ks = KernelShap(forward)
  m = int(mask.max()) + 1
  out = []
  for r in range(replicates):  # Captum draws with torch's global generator
    torch.manual_seed(seed + r)
    a = ks.attribute(x, baselines=fill, target=target, feature_mask=mask, n_samples=n,
                     perturbations_per_eval=64, return_input_shape=False)
    out.append(a.detach().numpy().reshape(-1)[:m])
  return np.asarray(out, np.float64)


def shapley_error_rows(budgets=(52, 208, 832), cnn_budgets=(68, 272, 1088), replicates: int = 16,
                       estimators=ESTIMATORS, captum: bool | None = None, cnn: bool = True,
                       seed: int = 0) -> list[dict[str, Any]]:
  """Squared error against the exact Shapley values per model evaluation, per
  estimator and budget, on the closed-form model and the small CNN (module
  docstring).

  Args:
    budgets, cnn_budgets: model evaluations per example (KernelSHAP spends 2
      of them on the empty and full coalitions; permutations cost M + 1 each,
      so a budget buys ``n // (M + 1)`` of them, and an even count >= 4 for
      antithetic pairs).
    replicates: independent runs per (estimator, budget), rows of one batch.
    estimators: any of `ESTIMATORS`; Owen values are always added.
    captum: run Captum's `KernelShap` on the torch twins; None: when importable.
    cnn: include the CNN (its exact answer costs 2^16 evaluations).
    seed: models, inputs and keys.

  Returns:
    a list of dicts: model, features, estimator, library, evaluations,
    replicates, mse, mse_se, mse_times_evaluations, and coverage (saljax's
    sampling estimators) and seconds (wall time, compile included).
  """
  if captum is None:
    try:
      import captum.attr  # noqa: F401
      captum = True
    except ImportError:
      captum = False
  key = jax.random.key(seed)
  rows: list[dict[str, Any]] = []

  # The closed-form model over "elements" (every input a feature).
  poly = Polynomial(seed=seed)
  m = poly.m
  exact = poly.shapley()
  x = jnp.asarray(np.repeat(poly.x[None], replicates, 0), jnp.float32)
  fill = jnp.asarray(np.repeat(poly.fill[None], replicates, 0), jnp.float32)
  target = jnp.zeros(replicates, jnp.int32)
  enumerated = np.asarray(P.kernel_shap(poly.logits, x[:1], target[:1], exact=True,
                                        segments="elements", fill=fill[:1]))[0]
  oracle_gap = float(np.abs(enumerated - exact).max())
  if oracle_gap > 1e-4:  # the analytic answer and the 2^M sum disagree: a bug, not a result
    raise AssertionError(f"closed-form Shapley values differ from enumeration by {oracle_gap}")
  for name in estimators:
    for n in budgets:
      t0 = time.time()
      phi, se = _saljax_run(name, poly.logits, x, fill, target, "elements", n, m, key)
      phi, se = np.asarray(phi, np.float64), np.asarray(se, np.float64)
      rows.append(_row("closed_form", m, name, "saljax", _cost(name, n, m), phi - exact, se,
                       time.time() - t0))
  t0 = time.time()
  owen = np.asarray(saljax.owen_values(poly.logits, x[:1], target[:1], segments="elements",
                                       fill=fill[:1]), np.float64)
  cost = saljax.explainers.entry("owen_values").cost(poly.logits, x[:1], segments="elements")
  rows.append(_row("closed_form", m, "owen", "saljax", cost, owen - exact, seconds=time.time() - t0))
  if captum:
    import torch
    wt = torch.tensor(poly.w)

    def forward(t):  # the polynomial in torch, float64 inside
      v = t.double() @ wt
      for i, j, c in poly.pairs:
        v = v + c * t[:, i].double() * t[:, j].double()
      for i, j, k, e in poly.triples:
        v = v + e * t[:, i].double() * t[:, j].double() * t[:, k].double()
      return torch.stack([v, -v], -1).float()

    xt = torch.tensor(poly.x[None], dtype=torch.float32)
    ft = torch.tensor(poly.fill[None], dtype=torch.float32)
    mask = torch.arange(m)[None]
    for n in budgets:
      t0 = time.time()
      phi = _captum_kernel_shap(forward, xt, ft, 0, mask, n, replicates, seed)
      rows.append(_row("closed_form", m, "kernel", "captum", n, phi - exact,
                       seconds=time.time() - t0))

  if not cnn:
    return rows
  # The CNN over a 4 x 4 grid of a 16 x 16 image: 16 features, enumerated exactly.
  params = cnn_params(seed)
  pj = jax.tree_util.tree_map(jnp.asarray, params)
  f = jax.tree_util.Partial(cnn_apply, pj)
  labels = grid_labels()
  m = int(labels.max()) + 1
  img = jax.random.normal(jax.random.key(seed + 1), (1, 16, 16, 3))
  tgt = jnp.argmax(f(img), -1).astype(jnp.int32)
  fill_value = 0.0
  t0 = time.time()
  exact_map = P.kernel_shap(f, img, tgt, exact=True, segments=labels, fill=fill_value,
                            batch_size=512)
  exact = _per_feature(exact_map, labels, m)[0]
  exact_seconds = time.time() - t0
  xs = jnp.repeat(img, replicates, 0)
  ts = jnp.repeat(tgt, replicates, 0)
  for name in estimators:
    for n in cnn_budgets:
      t0 = time.time()
      phi, se = _saljax_run(name, f, xs, fill_value, ts, labels, n, m, key)
      rows.append(_row("cnn", m, name, "saljax", _cost(name, n, m),
                       _per_feature(phi, labels, m) - exact, _per_feature(se, labels, m),
                       time.time() - t0))
  t0 = time.time()
  owen = _per_feature(saljax.owen_values(f, img, tgt, segments=labels, fill=fill_value), labels, m)
  cost = saljax.explainers.entry("owen_values").cost(f, img, segments=labels)
  rows.append(_row("cnn", m, "owen", "saljax", cost, owen - exact, seconds=time.time() - t0))
  rows.append({"model": "cnn", "features": m, "estimator": "exact", "library": "saljax",
               "evaluations": 2 ** m, "replicates": 1, "mse": 0.0, "mse_se": 0.0,
               "mse_times_evaluations": 0.0, "seconds": round(exact_seconds, 2)})
  if captum:
    import torch
    net = torch_cnn(params)
    xt = torch.from_numpy(np.asarray(img).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():  # the twin computes the same logits
      gap = float(np.abs(net(xt).numpy() - np.asarray(f(img))).max())
    if gap > 1e-4:
      raise AssertionError(f"the torch twin's logits differ from the JAX CNN's by {gap}")
    mask = torch.from_numpy(labels.astype(np.int64))[None, None].expand(1, 3, 16, 16)
    for n in cnn_budgets:
      t0 = time.time()
      phi = _captum_kernel_shap(net, xt, torch.zeros_like(xt), int(tgt[0]), mask, n, replicates,
                                seed)
      rows.append(_row("cnn", m, "kernel", "captum", n, phi - exact, seconds=time.time() - t0))
  return rows


def _cost(name: str, n: int, m: int) -> int:
  """The evaluations `_saljax_run` actually spends for budget `n` (see its rounding)."""
  if name == "kernel":
    return n
  if name in ("paired", "leverage"):
    return 2 * ((n - 2) // 2) + 2
  per = m + 1
  return per * (n // per if name == "permutation" else 2 * max(2, n // (2 * per)))


def main(argv: list[str]) -> None:
  rows = shapley_error_rows()
  for row in rows:
    print(json.dumps(row))
  if len(argv) > 1:
    from experiments._common import atomic_write_text
    atomic_write_text(argv[1], "".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
  main(sys.argv)
