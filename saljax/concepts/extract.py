"""Concept extraction: activations ``A ≈ U W`` as dictionary learning.

Fel et al. 2023 ("A Holistic Approach to Unifying Automatic Concept Extraction
and Concept Importance Estimation", NeurIPS) cast every automatic concept
extraction as a factorization of a layer's activations ``A [n, c]`` into
coefficients ``U [n, k]`` and a dictionary (concept bank) ``W [k, c]``; the
methods differ by the constraints on ``U`` and ``W``. Implemented here, all in
JAX and compiled into one program per shape:

- ``"nmf"``: non-negative ``U`` and ``W`` (CRAFT, Fel et al. CVPR 2023), for
  activations after a ReLU; codes by projected accelerated gradient (the
  non-negative least squares of each row), dictionary by multiplicative
  updates (Lee and Seung 2001) on the accumulated statistics;
- ``"pca"``: orthonormal ``W`` (top eigenvectors of the covariance), ``U`` the
  projection of the centred rows;
- ``"kmeans"``: ``U`` one-hot (the nearest centroid), ``W`` the centroids
  (Lloyd's iterations);
- ``"dictionary"``: sparse dictionary learning, ``U`` the lasso codes
  (FISTA, Beck and Teboulle 2009) and unit-norm atoms updated by block
  coordinate descent on the accumulated statistics (Mairal et al. 2010);
- ``"sae"``: a TopK sparse autoencoder (Gao et al. 2024): ``U = TopK(ReLU((A -
  b) W_enc + b_enc))``, ``Â = U W + b``, trained by Adam on minibatches; with
  ``archetypes=m`` the Archetypal SAE (Fel et al. 2025): atoms are convex
  combinations of m data rows plus a small relaxation.

**Streaming.** Every fit reads the data chunk by chunk (`batch_size` rows or
images at a time) inside a ``lax.scan``, so at most one chunk of activations
exists at once: pass the activations themselves, or images and a `features`
function (e.g. `layer_features`) that computes a chunk's activations inside
the scan. NMF, k-means and dictionary learning alternate a pass that encodes
every chunk with the current dictionary and sums its sufficient statistics
(``UᵀU``, ``UᵀA``, cluster sums) with a dictionary update from those sums, so
their result does not depend on the chunking (up to float summation order);
PCA is one exact pass (sums of ``a`` and ``aaᵀ``). The SAE is trained by
minibatch Adam, so its chunk is its minibatch and changes the result, as for
any SGD.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from saljax import model as M
from saljax import parallel
from saljax import _validation

Array = jax.Array
METHODS = ("nmf", "pca", "kmeans", "dictionary", "sae")
POOLS = ("mean", "none")
_EPS = 1e-8


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=("dictionary", "params"),
                   meta_fields=("method", "code_steps", "sparsity", "top_k"))
@dataclasses.dataclass(frozen=True)
class Concepts:
  """A learned concept bank, a pytree (arrays are leaves, options static).

  Attributes:
    dictionary: ``W [k, c]``, one concept direction per row.
    params: method-specific arrays: PCA ``{"mean": [c]}``; SAE ``{"w_enc": [c, k],
      "b_enc": [k], "b_dec": [c]}``; ``{}`` otherwise.
    method: one of `METHODS`.
    code_steps: iterations of the code solver (NMF, dictionary).
    sparsity: the lasso weight of ``"dictionary"`` (per row, on mean squared error scale).
    top_k: active latents per row of the SAE.
  """
  dictionary: Array
  params: dict
  method: str
  code_steps: int = 100
  sparsity: float = 0.0
  top_k: int = 0

  @property
  def num_concepts(self) -> int:
    return int(self.dictionary.shape[0])


# ----------------------------------------------------------------------------
# Encoding and decoding (any leading shape; the last axis is channels).


def _lipschitz(w: Array) -> Array:
  # ||W Wᵀ||_2 bounds the curvature of ½||a - u W||² in u; a few power steps
  # from ones are enough for a step size (overestimating is safe).
  g = w @ w.T
  v = jnp.ones((g.shape[0],), g.dtype)
  v = jax.lax.fori_loop(0, 20, lambda _, v: (g @ v) / (jnp.linalg.norm(g @ v) + _EPS), v)
  return jnp.maximum(v @ g @ v * 1.01, _EPS)


def _fista(a: Array, w: Array, steps: int, prox: Callable[[Array, Array], Array]) -> Array:
  """Accelerated proximal gradient for min_u ½||a - u W||² + r(u), rows of `a`
  solved together (``[n, c] -> [n, k]``), from u = 0."""
  lip = _lipschitz(w)
  g, b = w @ w.T, a @ w.T
  u0 = jnp.zeros(a.shape[:-1] + (w.shape[0],), a.dtype)

  def step(_, carry):
    u, y, t = carry
    u_new = prox(y - (y @ g - b) / lip, lip)
    t_new = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
    return u_new, u_new + ((t - 1) / t_new) * (u_new - u), t_new

  return jax.lax.fori_loop(0, steps, step, (u0, u0, jnp.asarray(1.0, a.dtype)))[0]


def encode(concepts: Concepts, a: Array) -> Array:
  """Concept coefficients ``U [..., k]`` of activations ``a [..., c]``.

  NMF: non-negative least squares; PCA: projection of ``a - mean``; k-means:
  one-hot nearest centroid; dictionary: lasso codes; SAE: the TopK encoder.
  """
  w = concepts.dictionary
  a = jnp.asarray(a)
  if a.shape[-1] != w.shape[1]:
    raise ValueError(f"encode: expected activations with {w.shape[1]} channels (last axis),"
                     f" got shape {a.shape}")
  m = concepts.method
  if m == "nmf":
    return _fista(a, w, concepts.code_steps, lambda v, _: jnp.maximum(v, 0))
  if m == "dictionary":
    lam = concepts.sparsity * a.shape[-1]
    return _fista(a, w, concepts.code_steps,
                  lambda v, lip: jnp.sign(v) * jnp.maximum(jnp.abs(v) - lam / lip, 0))
  if m == "pca":
    return (a - concepts.params["mean"]) @ w.T
  if m == "kmeans":
    d = (a * a).sum(-1, keepdims=True) - 2 * a @ w.T + (w * w).sum(-1)
    return jax.nn.one_hot(jnp.argmin(d, -1), w.shape[0], dtype=a.dtype)
  if m == "sae":
    p = concepts.params
    return _topk((a - p["b_dec"]) @ p["w_enc"] + p["b_enc"], concepts.top_k)
  raise ValueError(f"encode: unknown method {m!r}; expected one of {METHODS}")


def decode(concepts: Concepts, u: Array) -> Array:
  """Activations ``[..., c]`` rebuilt from coefficients ``u [..., k]``: ``u W``
  (plus the mean for PCA, the decoder bias for the SAE)."""
  out = u @ concepts.dictionary
  if concepts.method == "pca":
    out = out + concepts.params["mean"]
  if concepts.method == "sae":
    out = out + concepts.params["b_dec"]
  return out


def _topk(z: Array, k: int) -> Array:
  z = jax.nn.relu(z)
  kth = jax.lax.top_k(z, k)[0][..., -1:]
  return jnp.where(z >= kth, z, 0)


# ----------------------------------------------------------------------------
# Features: a pytree callable computing a chunk's activations inside the fit.


@jax.tree_util.register_pytree_node_class
class LayerFeatures:
  """``x -> activations of `layer``` of a tapped model (a pytree: the model's
  arrays are data, `layer` static), for `fit`'s `features`."""

  def __init__(self, tapped: M.Tapped, layer: str):
    self.tapped, self.layer = tapped, layer

  def __call__(self, x: Array) -> Array:
    return self.tapped(x)[1][self.layer]

  def tree_flatten(self):
    return (self.tapped,), self.layer

  @classmethod
  def tree_unflatten(cls, layer, children):
    return cls(children[0], layer)


def layer_features(model: Any, layer: str) -> LayerFeatures:
  """The activations of `layer` of `model` (a `Tapped`, or a classifier with ``.tapped``)."""
  tapped = model if isinstance(model, M.Tapped) else getattr(model, "tapped", model)
  M.check_layers(tapped, (layer,))
  return LayerFeatures(tapped, layer)


def _identity(x):
  return x


def _rows(a: Array, pool: str) -> Array:
  """A chunk's activations as rows ``[n', c]``: spatial mean per example, or every position."""
  if a.ndim == 2:
    return a
  if pool == "mean":
    return a.reshape(a.shape[0], -1, a.shape[-1]).mean(1)
  return a.reshape(-1, a.shape[-1])


# ----------------------------------------------------------------------------
# Fitting.


def _check(method, k, batch_size, epochs, data):
  method = _validation.check_choice(method, "method", METHODS)
  k = parallel.check_count(k, "concepts")
  batch_size = parallel.check_count(batch_size, "batch_size")
  epochs = parallel.check_count(epochs, "epochs")
  if not hasattr(data, "shape") or len(data.shape) < 2:
    raise ValueError(f"data: expected an array [N, ...] (activations [N, ..., c] or inputs for"
                     f" `features`), got {_validation.describe(data)}")
  if data.shape[0] < 1:
    raise ValueError("data: expected at least one example, got 0")
  return method, k, batch_size, epochs


def fit(key: Array, data: Array, method: str = "nmf", concepts: int = 10, *,
        features: Callable[[Array], Array] | None = None, pool: str = "mean",
        batch_size: int = 256, epochs: int = 50, code_steps: int = 100,
        sparsity: float = 0.05, top_k: int | None = None, learning_rate: float = 1e-3,
        archetypes: int = 0, relaxation: float = 0.01) -> Concepts:
  """Learns `concepts` concepts from a stream of activations, ``A ≈ U W``.

  Args:
    key: PRNG key (initial dictionary: activations of randomly chosen
      examples; SAE minibatch order). The result is deterministic under it.
    data: activations ``[N, ..., c]``, or inputs ``[N, ...]`` for `features`.
    method: one of `METHODS` (default ``"nmf"``, CRAFT's choice for ReLU layers).
    concepts: the number of concepts ``k`` (default 10; CRAFT's Xplique default is 20
      for ImageNet layers, fewer read better on small class sets).
    features: ``x [n, ...] -> activations [n, ..., c]`` applied per chunk inside the
      compiled fit (e.g. `layer_features`), so the activations of the whole set
      never exist at once; None: `data` are activations.
    pool: ``"mean"`` (default, CRAFT: one row per example, the spatial mean of
      its activations) or ``"none"`` (every spatial position is a row).
    batch_size: examples per chunk (default 256): bounds memory; for the SAE also
      its minibatch.
    epochs: passes over the data (default 50; PCA makes one).
    code_steps: solver iterations per code for NMF and dictionary (default 100).
    sparsity: lasso weight for ``"dictionary"``, relative to the mean squared
      reconstruction error per channel (default 0.05).
    top_k: active latents per row of the SAE (default ``max(1, k // 4)``).
    learning_rate: Adam step of the SAE (default 1e-3).
    archetypes: for the SAE, 0 (default: a free decoder) or the number of
      candidate rows (drawn with the key) whose convex combinations, plus a
      relaxation of norm <= `relaxation` (default 0.01, as RA-SAE's delta), make
      the decoder atoms: the Archetypal SAE of Fel et al. 2025. ``params`` then
      holds ``mix`` (row-stochastic ``[k, m]``) and ``archetypes`` ``[m, c]``.
  """
  method, k, batch_size, epochs = _check(method, concepts, batch_size, epochs, data)
  pool = _validation.check_choice(pool, "pool", POOLS)
  code_steps = parallel.check_count(code_steps, "code_steps")
  if top_k is None:
    top_k = max(1, k // 4)
  top_k = parallel.check_count(top_k, "top_k")
  if top_k > k:
    raise ValueError(f"top_k: expected at most concepts={k}, got {top_k}")
  if not float(sparsity) >= 0:
    raise ValueError(f"sparsity: expected a float >= 0, got {sparsity!r}")
  if not float(learning_rate) > 0:
    raise ValueError(f"learning_rate: expected a float > 0, got {learning_rate!r}")
  archetypes = parallel.check_count(archetypes, "archetypes", minimum=0)
  if archetypes and method != "sae":
    raise ValueError(f"archetypes: only the SAE has an archetypal decoder, got method={method!r}")
  if not float(relaxation) >= 0:
    raise ValueError(f"relaxation: expected a float >= 0, got {relaxation!r}")
  feats = M.as_data(features) if features is not None else M.as_data(_identity)
  data = jnp.asarray(data)
  shapes = _row_shape.eval_shape(feats, jax.ShapeDtypeStruct((1,) + data.shape[1:], data.dtype),
                                 pool=pool)
  if shapes.shape[-1] < 1:
    raise ValueError(f"features: expected activations with a channel axis, got {shapes.shape}")
  if method in ("pca",) and k > shapes.shape[-1]:
    raise ValueError(f"concepts: PCA gives at most c={shapes.shape[-1]} components, got {k}")
  return _fit(key, data, feats, method=method, k=k, pool=pool,
              batch_size=min(batch_size, data.shape[0]), epochs=epochs, code_steps=code_steps,
              sparsity=float(sparsity), top_k=top_k, learning_rate=float(learning_rate),
              archetypes=archetypes, relaxation=float(relaxation))


# A jitted function so the shape check's trace is cached like the fit's.
_row_shape = jax.jit(lambda f, x, pool: _rows(f(x), pool), static_argnames="pool")


def _chunks(data: Array, batch_size: int):
  """Data padded to whole chunks ``[m, batch, ...]`` and the weight of each row (0 = padding)."""
  n = data.shape[0]
  m = -(-n // batch_size)
  pad = m * batch_size - n
  x = jnp.concatenate([data, jnp.repeat(data[-1:], pad, 0)]) if pad else data
  wt = (jnp.arange(m * batch_size) < n).astype(jnp.float32)
  return x.reshape((m, batch_size) + data.shape[1:]), wt.reshape(m, batch_size)


def _row_weights(a_chunk: Array, wt: Array, rows: Array) -> Array:
  # Weights of the rows of a chunk: one per example, or repeated per position.
  return jnp.repeat(wt, rows.shape[0] // wt.shape[0])


@functools.partial(jax.jit, static_argnames=("method", "k", "pool", "batch_size", "epochs",
                                             "code_steps", "sparsity", "top_k", "learning_rate",
                                             "archetypes", "relaxation"))
def _fit(key, data, feats, *, method, k, pool, batch_size, epochs, code_steps, sparsity, top_k,
         learning_rate, archetypes, relaxation):
  xs, wts = _chunks(data, batch_size)
  k_init, k_train = jax.random.split(key)
  n = data.shape[0]

  def rows_of(x, wt):
    a = feats(x)
    r = _rows(a, pool).astype(jnp.float32)
    return r, _row_weights(a, wt, r)

  # Initial dictionary: rows of k examples drawn uniformly (with replacement:
  # sampling without it sorts, which XLA:CPU compiles slowly), each perturbed
  # by its own jitter so that a repeated draw does not give tied atoms.
  idx = jax.random.randint(k_init, (k,), 0, n)
  init_rows, _ = rows_of(data[idx], jnp.ones((k,)))
  init_rows = init_rows.reshape(k, -1, init_rows.shape[-1]).mean(1)
  c = init_rows.shape[-1]
  jitter = jax.random.uniform(jax.random.fold_in(k_init, 1), (k, c), minval=0.9, maxval=1.1)
  spec = dict(code_steps=code_steps, sparsity=sparsity, top_k=top_k)

  def scan_sum(stat):
    def body(acc, xw):
      r, w = rows_of(*xw)
      return jax.tree_util.tree_map(jnp.add, acc, stat(r, w)), None
    zero = jax.eval_shape(lambda: stat(*rows_of(xs[0], wts[0])))
    zero = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
    return jax.lax.scan(body, zero, (xs, wts))[0]

  if method == "pca":
    s1, s2, cnt = scan_sum(lambda r, w: (w @ r, (r * w[:, None]).T @ r, w.sum()))
    mean = s1 / cnt
    cov = s2 / cnt - jnp.outer(mean, mean)
    _, vecs = jnp.linalg.eigh(cov)
    comps = vecs[:, ::-1][:, :k].T
    # A sign convention (largest entry positive) so the result does not depend on eigh's.
    sign = jnp.sign(comps[jnp.arange(k), jnp.argmax(jnp.abs(comps), 1)])
    return Concepts(comps * sign[:, None], {"mean": mean}, "pca", **spec)

  if method == "kmeans":
    def update(_, w):
      cur = Concepts(w, {}, "kmeans", **spec)
      sums, counts = scan_sum(lambda r, wt: ((encode(cur, r) * wt[:, None]).T @ r,
                                             (encode(cur, r) * wt[:, None]).sum(0)))
      return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], w)
    w = jax.lax.fori_loop(0, epochs, update, init_rows * jitter)
    return Concepts(w, {}, "kmeans", **spec)

  if method in ("nmf", "dictionary"):
    if method == "nmf":
      w0 = jnp.maximum(init_rows, 0) * jitter + 1e-3
    else:
      w0 = init_rows * jitter
      w0 = w0 / (jnp.linalg.norm(w0, axis=1, keepdims=True) + _EPS)

    def update(_, w):
      cur = Concepts(w, {}, method, **spec)

      def stat(r, wt):
        u = encode(cur, r) * wt[:, None]
        return u.T @ u, u.T @ r
      uu, ua = scan_sum(stat)
      if method == "nmf":
        # Multiplicative updates of W on the accumulated statistics: W stays
        # non-negative, the squared error does not increase.
        def mu(_, w):
          return w * ua / (uu @ w + _EPS)
        return jax.lax.fori_loop(0, 10, mu, w)

      def atom(j, w):  # block coordinate descent on one atom, then norm <= 1
        wj = w[j] + (ua[j] - uu[j] @ w) / jnp.maximum(uu[j, j], _EPS)
        wj = wj / jnp.maximum(jnp.linalg.norm(wj), 1.0)
        # An unused atom (no row codes on it) keeps its value.
        return w.at[j].set(jnp.where(uu[j, j] > _EPS, wj, w[j]))
      return jax.lax.fori_loop(0, k, atom, w)
    w = jax.lax.fori_loop(0, epochs, update, w0)
    return Concepts(w, {}, method, **spec)

  # TopK SAE: minibatch Adam over the chunks, in an order drawn per epoch.
  import optax
  w_dec = init_rows * jitter
  w_dec = w_dec / (jnp.linalg.norm(w_dec, axis=1, keepdims=True) + _EPS)
  # Decoder bias at the mean of the initial rows (a cheap stand-in for the
  # data mean the SAE literature starts from), encoder tied to the decoder.
  params = {"w_enc": w_dec.T, "b_enc": jnp.zeros((k,)), "b_dec": init_rows.mean(0)}
  if archetypes:
    # Archetypal SAE (Fel et al. 2025, RA-SAE): each atom is a convex combination
    # of candidate rows (drawn with the key) plus a relaxation of norm <= delta,
    # so concepts stay inside the data's hull and vary less between runs.
    k_cand, k_mix = jax.random.split(jax.random.fold_in(k_init, 2))
    picked = data[jax.random.randint(k_cand, (archetypes,), 0, n)]
    cand, _ = rows_of(picked, jnp.ones((archetypes,)))
    cand = cand.reshape(archetypes, -1, c).mean(1)
    params.update(mix=jax.random.normal(k_mix, (k, archetypes)), relax=jnp.zeros((k, c)))
  else:
    params["w_dec"] = w_dec
  opt = optax.adam(learning_rate)

  def clip_relax(r):
    norm = jnp.linalg.norm(r, axis=1, keepdims=True)
    return r * jnp.minimum(1.0, relaxation / jnp.maximum(norm, _EPS))

  def dictionary_of(p):
    if archetypes:
      return jax.nn.softmax(p["mix"], axis=1) @ cand + p["relax"]
    return p["w_dec"]

  def as_concepts(p):
    extra = ({"mix": jax.nn.softmax(p["mix"], axis=1), "archetypes": cand} if archetypes else {})
    return Concepts(dictionary_of(p), {"w_enc": p["w_enc"], "b_enc": p["b_enc"],
                                       "b_dec": p["b_dec"], **extra}, "sae", **spec)

  def loss(p, r, wt):
    cur = as_concepts(p)
    err = ((decode(cur, encode(cur, r)) - r) ** 2).sum(-1)
    return (err * wt).sum() / jnp.maximum(wt.sum(), 1)

  def epoch(carry, ekey):
    def step(carry, i):
      p, s = carry
      r, wt = rows_of(xs[i], wts[i])
      g = jax.grad(loss)(p, r, wt)
      upd, s = opt.update(g, s, p)
      p = optax.apply_updates(p, upd)
      if archetypes:  # projection onto the relaxation's ball
        p["relax"] = clip_relax(p["relax"])
      else:  # unit-norm decoder rows keep the code scale identifiable (as in TopK SAEs)
        p["w_dec"] = p["w_dec"] / (jnp.linalg.norm(p["w_dec"], axis=1, keepdims=True) + _EPS)
      return (p, s), None
    return jax.lax.scan(step, carry, jax.random.permutation(ekey, xs.shape[0]))[0], None

  (params, _), _ = jax.lax.scan(epoch, (params, opt.init(params)),
                                jax.random.split(k_train, epochs))
  return as_concepts(params)


# ----------------------------------------------------------------------------
# Reconstruction and crops.


def reconstruction_error(concepts: Concepts, data: Array, *,
                         features: Callable[[Array], Array] | None = None, pool: str = "mean",
                         batch_size: int = 256) -> Array:
  """Relative squared error ``Σ||A - decode(encode(A))||² / Σ||A - mean(A)||²`` over
  the stream (chunked like `fit`); 0 is perfect, 1 is no better than the mean."""
  pool = _validation.check_choice(pool, "pool", POOLS)
  batch_size = parallel.check_count(batch_size, "batch_size")
  feats = M.as_data(features) if features is not None else M.as_data(_identity)
  data = jnp.asarray(data)
  return _recon(concepts, data, feats, pool=pool, batch_size=min(batch_size, data.shape[0]))


@functools.partial(jax.jit, static_argnames=("pool", "batch_size"))
def _recon(concepts, data, feats, *, pool, batch_size):
  xs, wts = _chunks(data, batch_size)

  def body(acc, xw):
    a = feats(xw[0])
    r = _rows(a, pool).astype(jnp.float32)
    w = _row_weights(a, xw[1], r)
    err = ((decode(concepts, encode(concepts, r)) - r) ** 2).sum(-1)
    return (acc[0] + w @ err, acc[1] + w @ r, acc[2] + w @ (r * r).sum(-1), acc[3] + w.sum()), None

  c = concepts.dictionary.shape[1]
  (err, s1, s2, cnt), _ = jax.lax.scan(body, (0.0, jnp.zeros((c,)), 0.0, 0.0), (xs, wts))
  total = s2 - (s1 @ s1) / cnt
  return err / jnp.maximum(total, _EPS)


def random_crops(key: Array, images: Array, count: int, *, crop_size: int | float = 0.5,
                 out_size: int | None = None) -> tuple[Array, Array]:
  """`count` random square crops of `images` ``[N, H, W, C]``, resized to `out_size`.

  CRAFT learns concepts from crops of a class's images, each resized to the
  model's input, so that a concept is a part (an ear, a wheel) rather than a
  whole image. Crops are drawn uniformly (image, then top-left corner).

  Args:
    key: PRNG key; deterministic under it.
    images: ``[N, H, W, C]`` (already preprocessed for the model).
    count: how many crops.
    crop_size: side in pixels (int) or as a fraction of ``min(H, W)`` (float,
      default 0.5; Xplique's CRAFT uses 64-pixel patches of 224-pixel inputs).
    out_size: side of the resized crops (default ``min(H, W)``: the model's input).

  Returns:
    ``(crops [count, out, out, C], boxes [count, 4])`` with boxes ``(image, top, left, size)``.
  """
  count = parallel.check_count(count, "count")
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images: expected [N, H, W, C], got shape {images.shape}")
  side = min(images.shape[1:3])
  size = int(round(crop_size * side)) if isinstance(crop_size, float) else int(crop_size)
  if not 1 <= size <= side:
    raise ValueError(f"crop_size: expected 1 to {side} pixels (or a fraction in (0, 1]),"
                     f" got {crop_size!r}")
  out = int(out_size) if out_size is not None else side
  return _crops(key, images, count=count, size=size, out=out)


@functools.partial(jax.jit, static_argnames=("count", "size", "out"))
def _crops(key, images, *, count, size, out):
  n, h, w, ch = images.shape
  ki, kt, kl = jax.random.split(key, 3)
  img = jax.random.randint(ki, (count,), 0, n)
  top = jax.random.randint(kt, (count,), 0, h - size + 1)
  left = jax.random.randint(kl, (count,), 0, w - size + 1)

  def one(i, t, l):
    c = jax.lax.dynamic_slice(images[i], (t, l, 0), (size, size, ch))
    return jax.image.resize(c, (out, out, ch), "bilinear")

  crops = jax.vmap(one)(img, top, left)
  return crops, jnp.stack([img, top, left, jnp.full_like(img, size)], 1)
