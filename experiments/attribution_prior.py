r"""Training with an attribution prior in one jitted step (Erion, Janizek,
Sturmfels, Lundberg, Lee 2021, "Improving performance of deep learning models
with axiomatic attribution priors and expected gradients", Nature Machine
Intelligence 3, arXiv:1906.10670).

The loss is ``cross_entropy + lam * Omega(phi)`` where ``phi`` is the
expected-gradients map of the label, drawn with one reference per example
per step (the paper's k = 1), and ``Omega`` is the paper's image prior: the
total variation of the channel-summed map,
``mean |phi[i+1, j] - phi[i, j]| + |phi[i, j+1] - phi[i, j]|``. The map is
computed by ``saljax.expected_gradients`` *inside* the jitted training step,
on a model whose parameters are traced (``jax.tree_util.Partial``), and
differentiated with respect to them: this is what the model-as-data contract
makes possible.

The claim checked: with the prior, held-out expected-gradients maps are much
smoother (lower total variation) at nearly the same accuracy. Data: the 8x8
digits that ship with scikit-learn, upsampled to 16x16 (no download).

    python -m experiments.attribution_prior --workdir=runs/attribution_prior

writes ``results.json`` (accuracy and total variation with and without the
prior) and ``maps.png`` (held-out digits and both models' maps).
"""
from __future__ import annotations

import json
import os
from typing import Any

from absl import app, flags

FLAGS = flags.FLAGS


def _define_flags():
  # Defined only when run as a binary: importing this module (tests, other
  # binaries in one process) must not claim flag names like --steps.
  flags.DEFINE_string("workdir", None, "where results.json and maps.png go")
  flags.DEFINE_integer("steps", 600, "training steps")
  flags.DEFINE_float("lam", 3.0, "weight of the total-variation prior")
  flags.DEFINE_integer("seed", 0, "initialization and data order seed")


def total_variation(maps):
  """Mean anisotropic total variation of ``[B, H, W, C]`` maps summed over
  channels, per example ``[B]`` (the image prior of Erion et al. 2021)."""
  import jax.numpy as jnp
  m = maps.sum(-1)
  dh = jnp.abs(m[:, 1:, :] - m[:, :-1, :]).mean((1, 2))
  dw = jnp.abs(m[:, :, 1:] - m[:, :, :-1]).mean((1, 2))
  return dh + dw


def digits(seed: int = 0):
  """(train_x, train_y, test_x, test_y): sklearn digits in [0, 1], 16x16x1."""
  import numpy as np
  from sklearn.datasets import load_digits
  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)
  x = np.repeat(np.repeat(x, 2, 1), 2, 2)[..., None]
  y = d.target.astype(np.int32)
  order = np.random.RandomState(seed).permutation(len(x))
  x, y = x[order], y[order]
  n = int(0.8 * len(x))
  return x[:n], y[:n], x[n:], y[n:]


def _net():
  import flax.linen as nn

  class Net(nn.Module):
    """A small CNN with smooth activations (a prior on gradients needs them)."""

    @nn.compact
    def __call__(self, x):
      x = nn.softplus(nn.Conv(16, (3, 3))(x))
      x = nn.softplus(nn.Conv(16, (3, 3), strides=2)(x))
      return nn.Dense(10)(x.reshape(x.shape[0], -1))

  return Net()


def train(lam: float, steps: int, seed: int, batch: int = 64, learning_rate: float = 3e-3):
  """Trains the CNN with prior weight `lam`; returns (apply_fn, params, trace_count).

  Both runs (any `lam`) share the initialization and the data order."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax.tree_util import Partial

  import saljax

  xtr, ytr, _, _ = digits(seed)
  net = _net()
  params = net.init(jax.random.key(seed), jnp.zeros((1,) + xtr.shape[1:]))["params"]
  apply_fn = lambda p, x: net.apply({"params": p}, x)  # noqa: E731  (defined once: static)
  tx = optax.adam(learning_rate)
  opt = tx.init(params)
  traces = [0]

  @jax.jit
  def step(params, opt, x, y, refs, key):
    traces[0] += 1

    def loss(p):
      logits = apply_fn(p, x)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      # The explainer runs on traced parameters, inside this jit, under grad.
      phi = saljax.expected_gradients(Partial(apply_fn, p), x, y, key=key, references=refs,
                                      samples=1)
      return ce + lam * total_variation(phi).mean(), ce

    (_, ce), g = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), opt, ce

  rng = np.random.RandomState(seed)
  key = jax.random.key(seed + 1)
  for i in range(steps):
    idx = rng.randint(0, len(xtr), batch)
    refs = xtr[rng.randint(0, len(xtr), batch)]
    params, opt, _ = step(params, opt, xtr[idx], ytr[idx], refs, jax.random.fold_in(key, i))
  return apply_fn, params, traces[0]


def run(workdir: str | None = None, steps: int = 600, lam: float = 3.0, seed: int = 0) -> dict:
  """Trains without and with the prior; returns and writes the comparison."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.tree_util import Partial

  import saljax

  xtr, _, xte, yte = digits(seed)
  refs = jnp.asarray(xtr[:128])
  res: dict[str, Any] = {"steps": steps, "lam": lam, "seed": seed}
  maps = {}
  for name, weight in (("baseline", 0.0), ("prior", lam)):
    apply_fn, params, traces = train(weight, steps, seed)
    model = Partial(apply_fn, params)
    acc = float((jnp.argmax(model(jnp.asarray(xte)), -1) == yte).mean())
    phi = saljax.expected_gradients(model, jnp.asarray(xte), jnp.asarray(yte),
                                    key=jax.random.key(99), references=refs, samples=32)
    # Total variation relative to the map's mean magnitude, so a prior that
    # merely shrinks the map does not count as smoother.
    tv = total_variation(phi) / (jnp.abs(phi.sum(-1)).mean((1, 2)) + 1e-12)
    res[name] = {"accuracy": acc, "relative_tv": float(tv.mean()),
                 "tv": float(total_variation(phi).mean()), "train_step_traces": traces}
    maps[name] = np.asarray(phi.sum(-1))
  res["tv_ratio"] = res["baseline"]["relative_tv"] / res["prior"]["relative_tv"]
  if workdir:
    _write(workdir, res, np.asarray(xte[:6, ..., 0]), maps)
  return res


def _write(workdir: str, res: dict, images, maps) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from experiments._common import atomic_write_text, save_figure
  os.makedirs(workdir, exist_ok=True)
  atomic_write_text(os.path.join(workdir, "results.json"), json.dumps(res, indent=2))
  n = len(images)
  fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.2))
  rows = [("digit", images, "gray"), ("no prior", maps["baseline"][:n], "RdBu_r"),
          (f"TV prior (lam={res['lam']:g})", maps["prior"][:n], "RdBu_r")]
  for r, (title, arr, cmap) in enumerate(rows):
    for i in range(n):
      a = axes[r, i]
      lim = float(abs(arr[i]).max()) or 1.0
      a.imshow(arr[i], cmap=cmap, **({} if cmap == "gray" else {"vmin": -lim, "vmax": lim}))
      a.set_xticks([]), a.set_yticks([])
    axes[r, 0].set_ylabel(title, fontsize=8)
  fig.suptitle("Expected gradients on held-out digits (Erion et al. 2021 smoothness prior)\n"
               f"accuracy {res['baseline']['accuracy']:.3f} vs {res['prior']['accuracy']:.3f};"
               f" relative TV {res['baseline']['relative_tv']:.3f} vs"
               f" {res['prior']['relative_tv']:.3f}", fontsize=8)
  fig.tight_layout()
  save_figure(fig, os.path.join(workdir, "maps.png"), dpi=110)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  res = run(FLAGS.workdir, FLAGS.steps, FLAGS.lam, FLAGS.seed)
  print(json.dumps(res, indent=2))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
