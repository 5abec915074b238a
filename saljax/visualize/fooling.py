"""Fooling images (Nguyen, Yosinski, Clune 2015, "Deep Neural Networks are Easily Fooled:
High Confidence Predictions for Unrecognizable Images", CVPR, arXiv:1412.1897).

Images that humans do not recognize but the model classifies with >= 99% confidence:

- `fooling_gradient`: gradient ascent on the log-softmax of each class from
  uniform noise (the paper's Section 3.4 / Simonyan et al.'s method), pixels
  parameterized by a sigmoid; all classes in one compiled call.
- `evolve`: the paper's evolutionary search, MAP-Elites (Mouret & Clune 2015)
  with one archive cell per class, black-box: it reads only the model's
  outputs (softmax probabilities), never a gradient. Each generation draws
  parents uniformly from the archive, mutates them, evaluates all offspring in
  one batched forward pass and lets each class's cell take the offspring with
  the highest probability for that class when it beats the elite. All
  generations run in one `lax.scan`. Two encodings:

  * ``"direct"``: one gene per pixel, initialized uniformly at random; each
    gene mutates with probability `mutation_rate` (halved every
    `halve_every` generations: the paper starts at 0.1 and halves every 1000)
    by the polynomial mutation operator with distribution index 15 (the
    paper's).
  * ``"cppn"``: a compositional pattern-producing network mapping
    ``(x, y, r, 1)`` to the pixel values, whose units each have an
    activation from {sine, Gaussian, tanh, sigmoid, |.|, identity}. The paper
    evolves CPPNs with NEAT (topology and weights); here the topology is fixed
    (two hidden layers of `cppn_hidden` units, fully connected) and evolution
    changes weights (Gaussian perturbations) and unit activations (redrawn),
    which keeps every genome one array shape and the population one batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import parallel
from saljax.visualize import activation as MX

Array = jax.Array
ENCODINGS = ("direct", "cppn")
_ETA = 15.0  # polynomial mutation's distribution index (Nguyen et al. 2015)


def fooling_gradient(model: Any, class_indices: Any, *, key: Any, size: Any, channels: int = 3,
                     steps: int = 100, learning_rate: float = 0.1,
                     value_range: Sequence[float] = (0.0, 1.0),
                     batch_size: int | None = None) -> MX.Result:
  """Gradient-ascent fooling images: maximize ``log softmax(f(x))[c]`` from uniform noise.

  Pixels are ``sigmoid(params)`` (always valid), started from noise uniform in
  [0.25, 0.75] under `key`; no transformations and no image prior, so the
  result stays noise-like to a human. Adam at `learning_rate` (0.1) for `steps`
  (100). Returns `Result` (images ``[K, H, W, C]``, values = log-probabilities per step).
  """
  return MX.maximize(model, MX.classes(class_indices, score="log_softmax"), key=key, size=size,
                     steps=steps, learning_rate=learning_rate, parameterization="pixel",
                     transforms=None, n_augment=1, channels=channels, value_range=value_range,
                     batch_size=batch_size)


# ----------------------------------------------------------------------------
# Encodings.


def _poly_mutate(x: Array, key: Array, rate: Array) -> Array:
  """Deb's polynomial mutation in [0, 1] of each gene with probability `rate`."""
  k1, k2 = jax.random.split(key)
  u = jax.random.uniform(k1, x.shape)
  delta = jnp.where(u < 0.5, (2 * u) ** (1 / (_ETA + 1)) - 1, 1 - (2 * (1 - u)) ** (1 / (_ETA + 1)))
  hit = jax.random.uniform(k2, x.shape) < rate
  return jnp.clip(jnp.where(hit, x + delta, x), 0.0, 1.0)


N_ACTIVATIONS = 6


def _activate(z: Array, ids: Array) -> Array:
  acts = jnp.stack([jnp.sin(z), jnp.exp(-z ** 2), jnp.tanh(z), jax.nn.sigmoid(z) * 2 - 1,
                    jnp.abs(z), z], 0)
  return jnp.take_along_axis(acts, ids[None, None, :], axis=0)[0]


@dataclasses.dataclass(frozen=True)
class _Direct:
  """Direct encoding (hashable by value: a static argument of the compiled search)."""
  size: tuple[int, int]
  channels: int

  def random(self, key):
    return jax.random.uniform(key, self.size + (self.channels,))

  def mutate(self, g, key, rate, sigma):
    return _poly_mutate(g, key, rate)

  def render(self, g):
    return g


@dataclasses.dataclass(frozen=True)
class _CPPN:
  """Fixed-topology CPPN encoding (hashable by value)."""
  size: tuple[int, int]
  channels: int
  hidden: int

  def coords(self):
    h, w = self.size
    yy, xx = jnp.meshgrid(jnp.linspace(-1, 1, h), jnp.linspace(-1, 1, w), indexing="ij")
    return jnp.stack([xx, yy, jnp.sqrt(xx ** 2 + yy ** 2), jnp.ones_like(xx)], -1).reshape(-1, 4)

  def random(self, key):
    k = jax.random.split(key, 4)
    h = self.hidden
    return {"w1": jax.random.normal(k[0], (4, h)) * 1.5,
            "w2": jax.random.normal(k[1], (h, h)) / np.sqrt(h) * 1.5,
            "w3": jax.random.normal(k[2], (h, self.channels)) / np.sqrt(h) * 1.5,
            "act": jax.random.randint(k[3], (2 * h,), 0, N_ACTIVATIONS)}

  def mutate(self, g, key, rate, sigma):
    keys = jax.random.split(key, 8)
    out = {}
    for i, name in enumerate(("w1", "w2", "w3")):
      hit = jax.random.uniform(keys[2 * i], g[name].shape) < rate
      out[name] = g[name] + jnp.where(hit, sigma * jax.random.normal(keys[2 * i + 1],
                                                                     g[name].shape), 0.0)
    redraw = jax.random.uniform(keys[6], g["act"].shape) < rate / 2
    out["act"] = jnp.where(redraw, jax.random.randint(keys[7], g["act"].shape, 0, N_ACTIVATIONS),
                           g["act"])
    return out

  def render(self, g):
    h = self.hidden
    z = _activate(self.coords() @ g["w1"], g["act"][:h])
    z = _activate(z @ g["w2"], g["act"][h:])
    img = jax.nn.sigmoid(2.0 * (z @ g["w3"]))
    return img.reshape(self.size + (self.channels,))


class Evolution(NamedTuple):
  """`evolve`'s result: the elite image of each class ``[K, H, W, C]`` in [0, 1], its
  probability ``[K]``, the archive's probabilities after every generation
  ``[generations, K]``, and the elite genomes."""
  images: Array
  fitness: Array
  history: Array
  genomes: Any


def _probs(f, images, classes, value_range, batch_size):
  lo, hi = value_range
  # Black box: only the outputs are read (and no gradient can flow back through them).
  p = parallel.chunked_map(lambda x: jax.nn.softmax(f((lo + (hi - lo) * x)[None])[0], -1),
                           images, batch_size=batch_size)
  return jax.lax.stop_gradient(p[:, classes])


@M.jit(static_argnames=("enc", "generations", "population", "halve_every", "value_range",
                        "batch_size"))
def _evolve(f, classes, key, rate, sigma, enc, generations, population, halve_every, value_range,
            batch_size):
  k_init, k_run = jax.random.split(key)
  n_cls = classes.shape[0]
  genomes = jax.vmap(enc.random)(jax.random.split(k_init, population))
  probs = _probs(f, jax.vmap(enc.render)(genomes), classes, value_range, batch_size)
  best = jnp.argmax(probs, 0)
  elites = jax.tree_util.tree_map(lambda a: a[best], genomes)
  fit = probs[best, jnp.arange(n_cls)]

  def gen(carry, inp):
    elites, fit = carry
    t, k = inp
    k1, k2 = jax.random.split(k)
    r = rate * 0.5 ** (t // halve_every)
    parents = jax.random.randint(k1, (population,), 0, n_cls)
    kids = jax.tree_util.tree_map(lambda a: a[parents], elites)
    kids = jax.vmap(lambda g, kk: enc.mutate(g, kk, r, sigma))(kids,
                                                              jax.random.split(k2, population))
    probs = _probs(f, jax.vmap(enc.render)(kids), classes, value_range, batch_size)
    best = jnp.argmax(probs, 0)
    best_p = probs[best, jnp.arange(n_cls)]
    better = best_p > fit

    def take(e, c):
      return jnp.where(better.reshape((-1,) + (1,) * (e.ndim - 1)), c[best], e)

    elites = jax.tree_util.tree_map(take, elites, kids)
    fit = jnp.where(better, best_p, fit)
    return (elites, fit), fit

  (elites, fit), hist = jax.lax.scan(
      gen, (elites, fit), (jnp.arange(generations), jax.random.split(k_run, generations)))
  return jax.vmap(enc.render)(elites), fit, hist, elites


def evolve(model: Any, class_indices: Any, *, key: Any, size: Any, channels: int = 3,
           encoding: str = "direct", generations: int = 500, population: int = 64,
           mutation_rate: float = 0.1, halve_every: int = 1000, mutation_std: float = 0.5,
           cppn_hidden: int = 16, value_range: Sequence[float] = (0.0, 1.0),
           batch_size: int | None = None) -> Evolution:
  """MAP-Elites fooling images (Nguyen et al. 2015), black-box: only softmax outputs are read.

  Args:
    model: ``x -> logits``; called on batches of offspring, never differentiated.
    class_indices: the classes ``[K]``, one archive cell each.
    key: a `jax.random` key (initial population, parents, mutations).
    size, channels: the image shape.
    encoding: ``"direct"`` (pixels) or ``"cppn"`` (module docstring).
    generations: MAP-Elites generations (500).
    population: offspring per generation (64), evaluated in one batch (chunks of
      `batch_size` when given).
    mutation_rate: per-gene probability (0.1, the paper's start), halved every
      `halve_every` generations (1000, the paper's).
    mutation_std: the CPPN weights' Gaussian perturbation (0.5).
    cppn_hidden: units per CPPN hidden layer (16).
  Returns:
    `Evolution`.
  """
  V.check_choice(encoding, "encoding", ENCODINGS)
  from saljax.explainers._registry import require_key
  key = require_key(key, "evolve")
  cls = MX._indices(class_indices, "class_indices")
  size = MX._size(size)
  channels = V.check_positive_int(channels, "channels")
  generations = parallel.check_count(generations, "generations")
  population = V.check_positive_int(population, "population")
  halve_every = V.check_positive_int(halve_every, "halve_every")
  if not 0 < float(mutation_rate) <= 1:
    raise ValueError(f"mutation_rate: expected a probability in (0, 1], got {mutation_rate!r}")
  if batch_size is not None:
    batch_size = V.check_positive_int(batch_size, "batch_size")
  f = M.as_model(model)
  _, num_classes = M.output_shape(f, jnp.zeros((1,) + size + (channels,)))
  if int(cls.max()) >= num_classes:
    raise ValueError(f"class_indices: expected indices < {num_classes} (the model's classes),"
                     f" got {np.asarray(cls).tolist()}")
  enc = _Direct(size, channels) if encoding == "direct" else _CPPN(size, channels,
                                                                   V.check_positive_int(
                                                                       cppn_hidden, "cppn_hidden"))
  images, fit, hist, genomes = _evolve(f, cls, key, jnp.float32(mutation_rate),
                                       jnp.float32(mutation_std), enc, generations, population,
                                       halve_every, MX._range(value_range),
                                       batch_size or population)
  return Evolution(images, fit, hist, genomes)


def train_digits_cnn(*, seed: int = 0, steps: int = 300, batch_size: int = 64,
                     learning_rate: float = 3e-3):
  """A small `saljax.models.cnn` (16, 32 channels; dense 64) on scikit-learn's 8x8 digits.

  Pixels scaled to [0, 1] (``/ 16``), images ``[N, 8, 8, 1]``; 75/25 split by
  a seeded permutation. Returns ``(classifier, test_accuracy, (x_test, y_test))``;
  the defaults reach about 0.95 test accuracy in a few seconds.
  """
  from sklearn.datasets import load_digits
  from saljax.models import cnn, quick, wrap
  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)[..., None]
  y = d.target.astype(np.int32)
  perm = np.random.default_rng(seed).permutation(len(x))
  cut = int(0.75 * len(x))
  tr, te = perm[:cut], perm[cut:]
  module = cnn(10, (16, 32), hidden=64)
  variables, _, _ = quick._train(module, x[tr], y[tr], seed=seed, steps=steps,
                                 batch_size=batch_size, learning_rate=learning_rate)
  clf = wrap(module, variables, input_shape=(8, 8, 1), class_names=[str(i) for i in range(10)],
             name="digits_cnn")
  return clf, quick._accuracy(clf, x[te], y[te]), (x[te], y[te])
