"""Targets: which differentiable score of the model's output an explanation explains.

Every explainer and metric takes ``target=`` as

- an int, int indices ``[B]``, or ``"predicted"``: that class's logit of a
  ``[B, C]`` classifier (the convention of Captum and PAIR saliency);
- int indices ``[B, T]`` or ``"all"`` (explainers): ``T`` (or every) class
  per example at once; the map gains a target axis, ``[B, T, ...]``;
- a callable ``target(outputs) -> [B]`` scores: any differentiable function
  of whatever the model returns (segmentation maps ``[B, H, W, K]``,
  regression values ``[B]``/``[B, K]``, embeddings, a detector's pytree of
  boxes and scores). A callable returning ``[B, T]`` asks for ``T`` targets
  at once, as above.

The helpers below build such callables as `Target` pytrees: their arrays are
traced data, so a new class, region or reference embedding reuses the
compiled method (a plain ``lambda`` works too, but compiles once per lambda
object, like any closure model; see `saljax.model`).

How it works (`saljax._registry`): before a method runs, a callable target
turns the model into the one-output model ``x -> target(f(x))[:, None]`` and
the target into class 0, so every method, gradient or perturbation, explains
the score with no code of its own. Several targets of one example run under
`jax.vmap` over the target index: the forward pass does not depend on the
index, so it is computed once, and only the backward pass (gradient methods)
or the scoring of each evaluation (perturbation methods) is batched over
targets.

``score="probability"`` (RISE, LIME, Score-CAM, ...) takes the softmax over
classes; a callable target has one score, whose softmax is always 1, so it is
refused: use `class_probability` as the target and ``score="logit"``.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

ALL = "all"


@jax.tree_util.register_pytree_node_class
class Target:
  """A score of the model's output, ``target(outputs) -> [B]`` (or ``[B, T]``).

  ``Target(fn, shared, per_example)`` computes ``fn(outputs, shared,
  per_example)``. `fn` is static (define it once, at module level), `shared`
  and `per_example` are pytrees of arrays traced as data; the leaves of
  `per_example` have the batch as their leading axis, so `saljax.parallel`
  pads and shards them with the inputs.
  """

  def __init__(self, fn: Callable, shared: Any = (), per_example: Any = (), name: str = ""):
    self.fn, self.shared, self.per_example, self.name = fn, shared, per_example, name

  def __call__(self, outputs):
    return self.fn(outputs, self.shared, self.per_example)

  @property
  def has_rows(self) -> bool:
    """Whether the target carries per-example data (classes, regions, boxes)."""
    return bool(jax.tree_util.tree_leaves(self.per_example))

  def by_row(self, outputs) -> Array:
    """Scores of every evaluated row under every example's data: ``[N, B]``
    (``[N, T, B]`` for several targets), for outputs of any ``N`` rows.

    Methods evaluate the model on batches other than x's rows (interpolation
    steps stacked, a pair of batches concatenated, one example at a time under
    `vmap`); they all pick the class of each evaluated row with int targets.
    Scoring each row under every example's data turns a per-example target
    into exactly that: column b is example b's score, so the method's own
    int target ``arange(B)`` lines rows and data up, whatever its batching.
    """
    n = jax.tree_util.tree_leaves(outputs)[0].shape[0]

    def one(row):
      data = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), row)
      return self.fn(outputs, self.shared, data)

    return jax.vmap(one, out_axes=-1)(self.per_example)

  def tree_flatten(self):
    return (self.shared, self.per_example), (self.fn, self.name)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(aux[0], children[0], children[1], aux[1])

  def __repr__(self):
    return f"Target({self.name or getattr(self.fn, '__name__', 'fn')})"


def is_callable_target(target: Any) -> bool:
  """Whether `target` is a score function rather than class indices."""
  return callable(target) and not isinstance(target, (str, np.ndarray, jax.Array))


def _classes(c: Any, name: str) -> tuple[Any, Any]:
  """``(shared, per_example)`` for a class index or per-example indices ``[B]``."""
  a = np.asarray(c) if not isinstance(c, jax.Array) else c
  if not jnp.issubdtype(a.dtype, jnp.integer):
    raise TypeError(f"{name}: expected an int class or int classes [B], got dtype {a.dtype}")
  if a.ndim == 0:
    return jnp.asarray(a, jnp.int32), ()
  if a.ndim != 1:
    raise ValueError(f"{name}: expected an int class or int classes [B], got shape {a.shape}")
  return (), jnp.asarray(a, jnp.int32)


def _pick(scores, shared, per_example):
  c = per_example if isinstance(per_example, jax.Array) else jnp.broadcast_to(
      shared, scores.shape[:1])
  return jnp.take_along_axis(scores, c[:, None], axis=1)[:, 0]


def _check_rank2(outputs, name):
  if outputs.ndim != 2:
    raise ValueError(f"{name}: expected class scores [B, C], got outputs of shape"
                     f" {tuple(outputs.shape)}")


def _logit_of(outputs, shared, per_example):
  _check_rank2(outputs, "class_logit")
  return _pick(outputs, shared, per_example)


def _probability_of(outputs, shared, per_example):
  _check_rank2(outputs, "class_probability")
  return _pick(jax.nn.softmax(outputs.astype(jnp.float32), -1), shared, per_example)


def _log_probability_of(outputs, shared, per_example):
  _check_rank2(outputs, "log_probability")
  return _pick(jax.nn.log_softmax(outputs.astype(jnp.float32), -1), shared, per_example)


def class_logit(c: Any) -> Target:
  """The logit of class `c` (an int, or one class per example ``[B]``); equal
  to passing `c` as the target."""
  return Target(_logit_of, *_classes(c, "class_logit"), name="class_logit")


def class_probability(c: Any) -> Target:
  """The softmax probability of class `c` (softmax in float32)."""
  return Target(_probability_of, *_classes(c, "class_probability"), name="class_probability")


def log_probability(c: Any) -> Target:
  """The log-softmax of class `c`: the log-likelihood, whose gradient is the
  logit's minus the probability-weighted mean of all logits' (float32)."""
  return Target(_log_probability_of, *_classes(c, "log_probability"), name="log_probability")


def _weighted_of(outputs, shared, per_example):
  _check_rank2(outputs, "weighted")
  w = per_example if isinstance(per_example, jax.Array) else shared
  if w.shape[-1] != outputs.shape[-1]:
    raise ValueError(f"weighted: expected {outputs.shape[-1]} weights (one per class), got"
                     f" {w.shape[-1]}")
  return (outputs * w.astype(outputs.dtype)).sum(-1)


def weighted(weights: Any) -> Target:
  """``sum_c weights[c] * logit_c``: `weights` ``[C]`` (shared) or ``[B, C]``.

  Linear in the logits, so a linear explainer's map of it is the weighted sum
  of the per-class maps (RFxG's contrasts and groups are such weights)."""
  w = jnp.asarray(weights)
  if not jnp.issubdtype(w.dtype, jnp.floating):
    w = w.astype(jnp.float32)
  if w.ndim == 1:
    return Target(_weighted_of, w, (), name="weighted")
  if w.ndim == 2:
    return Target(_weighted_of, (), w, name="weighted")
  raise ValueError(f"weighted: expected weights [C] or [B, C], got shape {tuple(w.shape)}")


def _membership(classes: Any, name: str, num_classes: int | None) -> np.ndarray:
  a = np.asarray(classes)
  if a.dtype == bool:
    return a.astype(np.float32)
  if not np.issubdtype(a.dtype, np.integer) or a.ndim != 1:
    raise TypeError(f"{name}: expected a list of class indices or a bool mask [C] / [B, C],"
                    f" got {a.dtype} of shape {a.shape}")
  if num_classes is None:
    raise ValueError(f"{name}: a list of classes needs num_classes= (the width of the output)")
  if ((a < 0) | (a >= num_classes)).any():
    raise ValueError(f"{name}: expected classes in [0, {num_classes}), got {a.tolist()}")
  m = np.zeros(num_classes, np.float32)
  m[a] = 1.0
  return m


def _multilabel_sigmoid_of(outputs, shared, per_example):
  _check_rank2(outputs, "multilabel")
  m = per_example if isinstance(per_example, jax.Array) else shared
  return (jax.nn.sigmoid(outputs.astype(jnp.float32)) * m).sum(-1)


def multilabel(classes: Any, *, num_classes: int | None = None, score: str = "logit") -> Target:
  """The summed score of a set of classes (a multi-label model's positives).

  Args:
    classes: class indices (with `num_classes`), or a bool mask ``[C]`` or
      ``[B, C]``.
    score: ``"logit"`` (default: the sum of the logits, linear) or
      ``"sigmoid"`` (the sum of per-class sigmoid probabilities, as a
      multi-label model is trained with).
  """
  m = _membership(classes, "multilabel", num_classes)
  if score == "logit":
    return weighted(m)
  if score != "sigmoid":
    raise ValueError(f"multilabel: score must be 'logit' or 'sigmoid', got {score!r}")
  m = jnp.asarray(m)
  return Target(_multilabel_sigmoid_of, *((m, ()) if m.ndim == 1 else ((), m)),
                name="multilabel")


def contrast(c: Any, against: Any, *, num_classes: int) -> Target:
  """``logit_c - logit_against`` (RFxG's "why c and not b?", Sadeghi et al.
  2025), or ``logit_c - sum_{k in set} logit_k`` when `against` is a list of
  classes or a bool mask (the reference code's contrast against a set).

  `c` is an int or ``[B]``; `against` an int / ``[B]`` class, a list of
  classes, or a bool mask ``[C]``/``[B, C]``.
  """
  ca = np.asarray(c)
  eye = np.eye(num_classes, dtype=np.float32)
  if ((ca < 0) | (ca >= num_classes)).any():
    raise ValueError(f"contrast: expected classes in [0, {num_classes}), got {ca.tolist()}")
  w = eye[ca]
  ag = np.asarray(against)
  if ag.dtype == bool:
    w = w - ag.astype(np.float32)
  elif ag.ndim == 0 or (ag.ndim == 1 and ca.ndim == 1 and len(ag) == len(ca)):
    if ((ag < 0) | (ag >= num_classes)).any():
      raise ValueError(f"contrast: expected classes in [0, {num_classes}), got {ag.tolist()}")
    w = w - eye[ag]
  else:
    w = w - _membership(ag, "contrast", num_classes)
  return weighted(w)


def _segmentation_of(outputs, shared, per_example):
  k, = shared
  if outputs.ndim < 3:
    raise ValueError(f"segmentation: expected per-position class scores [B, ..., K], got"
                     f" outputs of shape {tuple(outputs.shape)}")
  region = per_example if isinstance(per_example, jax.Array) else None
  s = jnp.take(outputs, k, axis=-1)
  if region is None:
    region = jnp.argmax(outputs, -1) == k  # the predicted region: pytorch-grad-cam's default
    region = jax.lax.stop_gradient(region)
  return (s * region.astype(s.dtype)).reshape(s.shape[0], -1).sum(-1)


def segmentation(k: int, region: Any = None) -> Target:
  """The summed score of class `k` over a region of a segmentation output
  ``[B, H, W, K]`` (pytorch-grad-cam's ``SemanticSegmentationTarget``).

  Args:
    k: the class.
    region: bool/float ``[B, H, W]`` (or ``[H, W]``, for every example).
      Default: where `k` is the predicted class (the argmax, held fixed, not
      differentiated), as in pytorch-grad-cam's tutorial.
  """
  if region is None:
    return Target(_segmentation_of, (jnp.int32(k),), (), name="segmentation")
  r = jnp.asarray(region)
  if r.dtype == bool:
    r = r.astype(jnp.float32)
  return Target(_segmentation_of, (jnp.int32(k),), r, name="segmentation") if r.ndim >= 3 else \
      Target(_segmentation_region_shared, (jnp.int32(k), r), (), name="segmentation")


def _segmentation_region_shared(outputs, shared, per_example):
  k, r = shared
  return _segmentation_of(outputs, (k,), jnp.broadcast_to(r, outputs.shape[:-1]))


def _regression_of(outputs, shared, per_example):
  if outputs.ndim == 1:
    return outputs
  if outputs.ndim == 2:
    return jnp.take(outputs, shared, axis=1)
  raise ValueError(f"regression: expected outputs [B] or [B, K], got {tuple(outputs.shape)}")


def regression(k: int = 0) -> Target:
  """A regression model's output: ``outputs`` itself for ``[B]``, column `k`
  of ``[B, K]``."""
  return Target(_regression_of, jnp.int32(k), (), name="regression")


def _similarity_of(outputs, shared, per_example):
  ref = per_example if isinstance(per_example, jax.Array) else shared
  e = outputs.reshape(outputs.shape[0], -1).astype(jnp.float32)
  r = jnp.broadcast_to(ref.reshape(-1, e.shape[-1]), e.shape).astype(jnp.float32)
  return (e * r).sum(-1)


def _cosine_of(outputs, shared, per_example):
  ref = per_example if isinstance(per_example, jax.Array) else shared
  e = outputs.reshape(outputs.shape[0], -1).astype(jnp.float32)
  r = jnp.broadcast_to(ref.reshape(-1, e.shape[-1]), e.shape).astype(jnp.float32)
  # The epsilon keeps the gradient finite at a zero embedding.
  return (e * r).sum(-1) / (jnp.linalg.norm(e, axis=-1) * jnp.linalg.norm(r, axis=-1) + 1e-12)


def embedding_similarity(reference: Any, *, kind: str = "cosine") -> Target:
  """Similarity of the model's embedding ``[B, D]`` to `reference` (``[D]``,
  shared, or ``[B, D]``): ``"cosine"`` (default, as CLIP-style retrieval
  scores) or ``"dot"``."""
  ref = jnp.asarray(reference)
  fn = {"cosine": _cosine_of, "dot": _similarity_of}.get(kind)
  if fn is None:
    raise ValueError(f"embedding_similarity: kind must be 'cosine' or 'dot', got {kind!r}")
  if ref.ndim == 1:
    return Target(fn, ref, (), name=f"embedding_{kind}")
  if ref.ndim == 2:
    return Target(fn, (), ref, name=f"embedding_{kind}")
  raise ValueError(f"embedding_similarity: expected a reference [D] or [B, D], got"
                   f" {tuple(ref.shape)}")


def box_iou(a: Array, b: Array) -> Array:
  """IoU of boxes ``[..., N, 4]`` and ``[..., M, 4]`` as ``(x0, y0, x1, y1)``: ``[..., N, M]``."""
  lo = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
  hi = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
  inter = jnp.prod(jnp.clip(hi - lo, 0), -1)
  area = lambda z: jnp.prod(jnp.clip(z[..., 2:] - z[..., :2], 0), -1)
  union = area(a)[..., :, None] + area(b)[..., None, :] - inter
  return inter / jnp.maximum(union, 1e-12)


def _detection_of(outputs, shared, per_example):
  boxes, scores = outputs[0], outputs[1]
  ref_boxes, ref_labels = per_example
  threshold, = shared
  # Each reference box is matched to the predicted box of largest IoU (held
  # fixed, as pytorch-grad-cam's FasterRCNNBoxScoreTarget matches boxes
  # before scoring); its score is that box's class score times the IoU, and
  # references matched below the threshold score 0.
  iou = jax.lax.stop_gradient(box_iou(ref_boxes, boxes))  # [B, K, N]
  best = jnp.argmax(iou, -1)  # [B, K]
  best_iou = jnp.take_along_axis(iou, best[..., None], -1)[..., 0]
  cls = jnp.take_along_axis(scores, best[..., None], axis=1)  # [B, K, C]
  cls = jnp.take_along_axis(cls, ref_labels[..., None], axis=-1)[..., 0]
  keep = (best_iou > threshold).astype(cls.dtype)
  return (keep * best_iou * cls).sum(-1)


def detection(boxes: Any, labels: Any, *, iou_threshold: float = 0.5) -> Target:
  """A detector's score for reference boxes ``[B, K, 4]`` (``x0, y0, x1,
  y1``) of classes `labels` ``[B, K]``: each reference is matched to the
  predicted box of largest IoU, and scores ``IoU x`` that box's score for the
  reference's class when the IoU exceeds `iou_threshold` (default 0.5,
  pytorch-grad-cam's), else 0; the scores are summed over references.

  The model must return ``(boxes [B, N, 4], class_scores [B, N, C])`` (wrap a
  detector whose output differs in a function that returns this pair, or pass
  your own callable target)."""
  b = jnp.asarray(boxes, jnp.float32)
  l = jnp.asarray(labels, jnp.int32)
  if b.ndim != 3 or b.shape[-1] != 4 or l.shape != b.shape[:2]:
    raise ValueError(f"detection: expected boxes [B, K, 4] and labels [B, K], got"
                     f" {tuple(b.shape)} and {tuple(l.shape)}")
  return Target(_detection_of, (jnp.float32(iou_threshold),), (b, l), name="detection")
