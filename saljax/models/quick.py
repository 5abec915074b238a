"""Zoo models trained in seconds on the data sets of `saljax.data.synthetic`.

Each ``train_*`` builds its data, trains a small zoo model with Adam (optax)
in a loop over one compiled step (minibatches drawn with replacement from
the training set), and returns a `Trained`: the wrapped
`Classifier` (tapped, with layer names), its data and its test accuracy.
Everything is deterministic under `seed` (data, initialization and batches);
the defaults reach the accuracies `tests/models/test_new_zoo.py` asserts in a
few seconds on one CPU core.

- `train_segmentation`: `unet` on planted squares and discs (pixel accuracy
  about 0.99 by default);
- `train_text`: `text_classifier` on the trigger-token task (about 1.0);
- `train_tabular`: `mlp` on scikit-learn's breast cancer (or wine) data,
  standardized (about 0.98).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from saljax.data import synthetic
# The functions, not the modules: the package exports functions of these names.
from saljax.models.mlp import mlp
from saljax.models.text import text_classifier
from saljax.models.unet import unet
from saljax.models.pretrained import Classifier


@dataclasses.dataclass(frozen=True)
class Trained:
  """A quickly trained model and what it was trained and tested on.

  Attributes:
    model: the `Classifier` (``model.tapped``, ``model.layer_names``,
      ``model.default_layer``).
    train, test: the data dicts (the generator's keys; for tabular data
      ``{"x", "label"}``).
    accuracy: test accuracy (per pixel for segmentation).
    losses: the training loss at every step, ``[steps]``.
    seconds: wall time of initialization and training, compilation included.
    info: anything else the data set returns (tabular: mean, std, names).
  """
  model: Classifier
  train: dict
  test: dict
  accuracy: float
  losses: np.ndarray
  seconds: float
  info: dict = dataclasses.field(default_factory=dict)


def _key(seed: int) -> jax.Array:
  # "rbg": XLA:CPU compiles threefry slowly (see saljax.models.init).
  return jax.random.key(int(seed), impl="rbg")


@functools.partial(jax.jit, static_argnames=("module",))
def _init(module, x, key):
  return module.init(key, x)


@functools.partial(jax.jit, static_argnames=("module", "learning_rate"), donate_argnums=(1, 2))
def _step(module, params, state, xb, yb, *, learning_rate: float):
  """One Adam step on softmax cross-entropy; returns ``(params, state, loss)``.

  A Python loop calls this compiled step rather than one ``lax.scan`` over
  all steps: XLA:CPU ran the U-Net's convolutions about 10x slower inside the
  scan's loop body than in a plain program (20 steps: 18.5 s against 1.6 s,
  jax 0.10 on this project's 2-core machine).
  """
  def loss_fn(p):
    logits = module.apply({"params": p}, xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  loss, g = jax.value_and_grad(loss_fn)(params)
  opt = optax.adam(learning_rate)
  updates, state = opt.update(g, state, params)
  return optax.apply_updates(params, updates), state, loss


def _train(module, x, y, *, seed, steps, batch_size, learning_rate):
  for name, v in (("steps", steps), ("batch_size", batch_size)):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
      raise ValueError(f"{name}: expected a positive int, got {v!r}")
  if not float(learning_rate) > 0:
    raise ValueError(f"learning_rate: expected a positive float, got {learning_rate!r}")
  start = time.perf_counter()
  x, y = np.asarray(x), np.asarray(y)
  # Minibatches drawn with replacement, from numpy so they are the same on
  # every backend; the seed also decides the initialization.
  rng = np.random.default_rng([int(seed), 3])
  batches = rng.integers(0, len(x), size=(int(steps), int(batch_size)))
  params = _init(module, jnp.asarray(x[:1]), _key(seed))["params"]
  state = optax.adam(float(learning_rate)).init(params)
  losses = []
  for idx in batches:
    params, state, loss = _step(module, params, state, jnp.asarray(x[idx]), jnp.asarray(y[idx]),
                                learning_rate=float(learning_rate))
    losses.append(loss)
  variables = {"params": params}
  losses = np.asarray(jnp.stack(losses))
  return variables, losses, time.perf_counter() - start


def _accuracy(clf: Classifier, x, y) -> float:
  pred = np.asarray(jnp.argmax(clf(jnp.asarray(x)), axis=-1))
  return float((pred == np.asarray(y)).mean())


def train_segmentation(*, seed: int = 0, n_train: int = 384, n_test: int = 64, size: int = 32,
                       num_classes: int = 3, features: Sequence[int] = (8, 16, 32),
                       steps: int = 150, batch_size: int = 16,
                       learning_rate: float = 3e-3) -> Trained:
  """A `unet` trained on `saljax.data.synthetic.segmentation` (planted shapes).

  Defaults: 384 training images of 32x32 with 3 classes, 150 Adam steps of
  16 images at 3e-3: a few seconds on one core (most of it compiling the
  step), test pixel accuracy about 0.99 (the background alone is about 0.85
  of the pixels, so the tests also check the shape pixels: about 0.96).
  ``result.train``/``test``: ``{"image", "mask"}``.
  """
  from saljax.models import wrap
  train = synthetic.segmentation(n_train, split="train", seed=seed, size=size,
                                 num_classes=num_classes)
  test = synthetic.segmentation(n_test, split="test", seed=seed, size=size,
                                num_classes=num_classes)
  module = unet(num_classes, features)
  variables, losses, seconds = _train(module, train["image"], train["mask"], seed=seed,
                                      steps=steps, batch_size=batch_size,
                                      learning_rate=learning_rate)
  names = ["background"] + [f"class_{k}" for k in range(1, num_classes)]
  clf = wrap(module, variables, input_shape=(size, size, 3), class_names=names, name="unet")
  return Trained(clf, train, test, _accuracy(clf, test["image"], test["mask"]), losses, seconds)


def train_text(*, seed: int = 0, n_train: int = 1024, n_test: int = 256, length: int = 16,
               vocab_size: int = 64, triggers: Sequence[int] = (1, 2, 3), dim: int = 32,
               depth: int = 1, steps: int = 120, batch_size: int = 32,
               learning_rate: float = 3e-3) -> Trained:
  """A `text_classifier` trained on `saljax.data.synthetic.trigger_tokens`.

  Defaults: 1024 training sequences of 16 tokens from 64 ids, label 1 when
  one of the triggers (1, 2, 3) occurs; one encoder block of width 32; 120
  Adam steps of 32 sequences at 3e-3: a few seconds on one core, test
  accuracy about 1.0. ``result.train``/``test``: ``{"tokens", "label",
  "trigger_mask"}``; the ground truth of a token attribution is
  ``trigger_mask``.
  """
  from saljax.models import wrap
  kw = dict(seed=seed, length=length, vocab_size=vocab_size, triggers=triggers)
  train = synthetic.trigger_tokens(n_train, split="train", **kw)
  test = synthetic.trigger_tokens(n_test, split="test", **kw)
  module = text_classifier(2, vocab_size=vocab_size, max_len=length, dim=dim,
                                    depth=depth)
  variables, losses, seconds = _train(module, train["tokens"], train["label"], seed=seed,
                                      steps=steps, batch_size=batch_size,
                                      learning_rate=learning_rate)
  clf = wrap(module, variables, input_shape=(length,), class_names=["no_trigger", "trigger"],
             name="text_classifier")
  return Trained(clf, train, test, _accuracy(clf, test["tokens"], test["label"]), losses, seconds)


def train_tabular(name: str = "breast_cancer", *, seed: int = 0,
                  hidden: Sequence[int] = (32,), steps: int = 200, batch_size: int = 64,
                  learning_rate: float = 3e-3) -> Trained:
  """An `mlp` trained on a standardized scikit-learn data set (`synthetic.tabular`).

  Defaults: breast cancer (30 features, 2 classes; 75/25 stratified split),
  one hidden layer of 32 ReLUs, 200 Adam steps of 64 rows at 3e-3: about a
  second, test accuracy 0.97 to 0.99 (seeds 0 to 2). The model takes
  *standardized* features; ``result.info`` holds ``mean``, ``std``,
  ``feature_names`` and ``class_names`` (raw = x * std + mean).
  """
  from saljax.models import wrap
  data = synthetic.tabular(name, seed=seed)
  train, test = data["train"], data["test"]
  num_classes = len(data["class_names"])
  module = mlp(num_classes, hidden)
  variables, losses, seconds = _train(module, train["x"], train["label"], seed=seed,
                                      steps=steps, batch_size=batch_size,
                                      learning_rate=learning_rate)
  clf = wrap(module, variables, input_shape=(train["x"].shape[1],),
             class_names=data["class_names"], name=f"mlp_{name}")
  info = {k: data[k] for k in ("mean", "std", "feature_names", "class_names")}
  return Trained(clf, train, test, _accuracy(clf, test["x"], test["label"]), losses, seconds, info)
