"""Removal strategies: what "removing" part of an input means to the model.

Every removal-based explainer and metric evaluates the model on inputs with
parts removed. How they are removed matters: a black (or grey, or blurred)
patch is itself a signal the model never saw in training, so its prediction
moves for reasons that have nothing to do with the removed content
("missingness bias", Jain et al. 2022). `Removal` names one strategy:

- ``"constant"``: removed pixels become `value` (default 0.0: black in the
  model's normalized input space, the usual baseline);
- ``"blur"``: removed pixels become the image blurred with `blur_sigma`;
- ``"mean"``: removed pixels become the mean colour (per channel) of the
  image, or of the feature group where a method masks groups (LIME's
  ``hide_color=None``; each function's own ``fill="mean"``);
- ``"token_drop"`` (Jain et al. 2022, "Missingness Bias in Model Debugging",
  arXiv:2204.08945): a ViT drops the removed patches' tokens instead of seeing
  black patches (`saljax.models.vit`);
- ``"layer_mask"`` (Balasubramanian and Feizi, ICCV 2023, "Towards Improved
  Input Masking for Convolutional Neural Networks", arXiv:2211.14646): a CNN
  carries the mask through its layers with neighbour padding, so it only
  processes the kept pixels (`saljax.models.cnn`, `saljax.models.resnet`,
  `saljax.models.efficientnet`, so the pretrained Lite0 too).

The first three are pixel strategies, ``f(x * m + fill * (1 - m))`` for a
keep-mask ``m``, and work with any model. The last two need the model's
*mask-aware forward* ``masked(x, keep[B, H, W]) -> logits``; `mask_forward`
finds it on a model that provides one:

- an object with a ``masked(x, keep)`` method (a pytree, so its arrays are
  data: `MaskAware` is one, ``mask_aware(module, variables)`` builds it for a
  linen module whose ``__call__`` takes ``keep=``, as saljax's `ViT`, `CNN`,
  `ResNet` and `EfficientNetLite` do);
- a `saljax.model.Tapped` built by ``from_linen`` or a
  `saljax.models.Classifier` whose linen module takes ``keep=``.

Anything else is refused with an error that says so. Both model kinds call
that one method: the kind names what it does (saljax's ViT drops tokens, its
CNN masks layers), so a user's model decides which it implements. The
explainers and
metrics take ``removal=`` (a `Removal` or its kind's name); their ``fill=``
stays the shorthand for the pixel strategies, and ``removal=None`` (the
default) changes nothing. With a model strategy, pixels the model still sees
although they are removed (a ViT patch that is only partly removed) take the
function's `fill`.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import parallel

Array = jax.Array

PIXEL_KINDS = ("constant", "blur", "mean")
MODEL_KINDS = ("token_drop", "layer_mask")
KINDS = PIXEL_KINDS + MODEL_KINDS


@dataclasses.dataclass(frozen=True)
class Removal:
  """A removal strategy (module docstring).

  Attributes:
    kind: one of `KINDS`; default ``"constant"``.
    value: the constant for ``"constant"`` (default 0.0, the usual black
      baseline in the model's input space).
    blur_sigma: Gaussian sigma in pixels for ``"blur"``; default None: each
      function's own default (10 for the explainers, 5 for the metrics, RISE's
      insertion; 10 in `removed_logits`).
  """
  kind: str = "constant"
  value: float = 0.0
  blur_sigma: float | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Removal: kind must be one of {list(KINDS)}, got {self.kind!r}")
    if isinstance(self.value, bool) or not isinstance(self.value, (int, float, np.floating,
                                                                   np.integer)):
      raise TypeError(f"Removal: value must be a float, got {V.describe(self.value)}")
    if not np.isfinite(self.value):
      raise ValueError(f"Removal: value must be finite, got {self.value!r}")
    if self.blur_sigma is not None and not (
        isinstance(self.blur_sigma, (int, float)) and not isinstance(self.blur_sigma, bool)
        and self.blur_sigma > 0):
      raise ValueError(f"Removal: blur_sigma must be a positive float, got {self.blur_sigma!r}")

  @property
  def needs_model(self) -> bool:
    """Whether the strategy needs the model's mask-aware forward (token_drop, layer_mask)."""
    return self.kind in MODEL_KINDS

  def fill(self) -> Any:
    """The ``fill=`` shorthand of a pixel strategy: `value`, ``"blur"`` or ``"mean"``."""
    if self.needs_model:
      raise ValueError(f"Removal {self.kind!r} is not a pixel fill; it needs the model's"
                       " mask-aware forward (saljax.removal.mask_forward)")
    return {"constant": float(self.value), "blur": "blur", "mean": "mean"}[self.kind]

  def __call__(self, f: Any, x: Array, keep: Array, *, batch_size: int | None = None) -> Array:
    """`removed_logits` with this strategy."""
    return removed_logits(f, x, keep, self, batch_size=batch_size)


def as_removal(removal: Any) -> Removal | None:
  """`removal` as a `Removal`: None stays None, a kind's name becomes ``Removal(kind)``."""
  if removal is None or isinstance(removal, Removal):
    return removal
  if isinstance(removal, str):
    return Removal(removal)
  raise TypeError(f"removal: expected None, a saljax.removal.Removal or one of {list(KINDS)},"
                  f" got {V.describe(removal)}")


# ----------------------------------------------------------------------------
# The model's mask-aware forward.


def _takes_keep(module) -> bool:
  try:
    return "keep" in inspect.signature(type(module).__call__).parameters
  except (TypeError, ValueError):
    return False


@jax.tree_util.register_pytree_node_class
class MaskAware:
  """A linen module whose ``__call__`` takes ``keep=``, with its variables.

  ``m(x)`` is the plain forward, ``m.masked(x, keep)`` the mask-aware one. A
  pytree: the variables are its leaves and the module is static (compared by
  value), so every checkpoint of an architecture shares compiled programs.
  """

  __saljax_data__ = True

  def __init__(self, module, variables):
    if not _takes_keep(module):
      raise TypeError(f"mask_aware: {type(module).__name__}.__call__ takes no keep= argument,"
                      " so it has no mask-aware forward")
    self.module, self.variables = module, variables

  def __call__(self, x: Array) -> Array:
    return self.module.apply(self.variables, x)

  def masked(self, x: Array, keep: Array) -> Array:
    """Logits with the pixels where ``keep[B, H, W]`` is False (or <= 0.5) removed."""
    return self.module.apply(self.variables, x, keep=keep)

  def tree_flatten(self):
    return (self.variables,), self.module

  @classmethod
  def tree_unflatten(cls, module, children):
    obj = object.__new__(cls)
    obj.module, obj.variables = module, children[0]
    return obj


def mask_aware(module, variables) -> MaskAware:
  """``MaskAware(module, variables)``: a model with ``masked(x, keep)`` for a
  linen module that takes ``keep=`` (saljax's `ViT`, `CNN`)."""
  return MaskAware(module, variables)


def mask_forward(f: Any, kind: str = "token_drop") -> Any:
  """The model `f` as something with ``masked(x, keep) -> logits``, or a TypeError.

  Accepts an object with a ``masked`` method, a `Tapped` from ``from_linen``
  or a `Classifier` whose linen module's ``__call__`` takes ``keep=``.
  """
  if callable(getattr(f, "masked", None)):
    return f
  module = variables = None
  if isinstance(f, M.Tapped):
    fwd = f._forward.unwrap()
    if isinstance(fwd, M._Bound) and isinstance(fwd.fn, M._LinenForward) and fwd.fn.method is None:
      module, variables = fwd.fn.module, fwd.params
  elif hasattr(f, "module") and hasattr(f, "params"):  # saljax.models.Classifier
    module, variables = f.module, f.params
  if module is not None and _takes_keep(module):
    return MaskAware(module, variables)
  raise TypeError(
      f"removal={kind!r} needs the model's mask-aware forward masked(x, keep[B, H, W]) -> logits;"
      f" got {V.describe(f)}, which has none. Pass saljax.removal.mask_aware(module, variables)"
      " for a linen module whose __call__ takes keep= (saljax.models ViT for token_drop; CNN,"
      " ResNet and EfficientNetLite for layer_mask), or any pytree callable with a"
      " masked(x, keep) method")


@jax.tree_util.register_pytree_node_class
class KeepChannel:
  """``x_aug[..., :C+1] -> masked(x_aug[..., :C], x_aug[..., C])``.

  How the removal-based explainers and metrics thread a model strategy
  through code written for pixel fills: they run on `x` with one extra
  channel of ones and a fill with that channel zero, so whatever mask they
  apply (``where``, ``x * m + fill * (1 - m)``) writes the keep-mask into the
  last channel, and this wrapper hands it to the mask-aware forward.
  """

  __saljax_data__ = True

  def __init__(self, forward):
    self.forward = forward

  def __call__(self, xa: Array) -> Array:
    return self.forward.masked(xa[..., :-1], xa[..., -1])

  def tree_flatten(self):
    return (self.forward,), None

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(children[0])


def add_keep_channel(x: Array, value: float = 1.0) -> Array:
  """`x` ``[B, H, W, C]`` with a constant channel appended: ``[B, H, W, C + 1]``."""
  return jnp.concatenate([x, jnp.full(x.shape[:-1] + (1,), value, x.dtype)], -1)


# ----------------------------------------------------------------------------
# Logits on a removed input.


def _pixel_fill(x: Array, removal: Removal) -> Array:
  if removal.kind == "constant":
    return jnp.full_like(x, removal.value)
  if removal.kind == "mean":
    return jnp.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape)
  from saljax import ops
  sigma = 10.0 if removal.blur_sigma is None else float(removal.blur_sigma)
  return ops.gaussian_blur(x, sigma, max_sigma=sigma, mode="reflect")


def pixel_fill(x: Array, removal: Any, blur_sigma: float = 10.0) -> Array:
  """The replacement images of a pixel strategy, shaped like `x` ``[B, H, W, C]``.

  ``"constant"``: its value; ``"mean"``: each image's mean colour;
  ``"blur"``: `x` blurred with the Removal's ``blur_sigma`` or else
  `blur_sigma` (default 10.0, the explainers' default). For methods whose
  perturbed input is ``x * m + fill * (1 - m)`` without feature groups.
  """
  removal = as_removal(removal)
  if removal is None or removal.needs_model:
    raise ValueError(f"pixel_fill: expected a pixel strategy {list(PIXEL_KINDS)}, got"
                     f" {None if removal is None else removal.kind!r}")
  if removal.kind == "blur" and removal.blur_sigma is None:
    removal = dataclasses.replace(removal, blur_sigma=float(blur_sigma))
  return _pixel_fill(x, removal)


@M.jit(static_argnames=("removal", "batch_size"))
def _removed_logits(f, x, keep, removal, batch_size):
  kf = keep.astype(x.dtype)

  def one(args):
    xb, kb = args
    if removal.needs_model:
      # Removed pixels are zeroed too: what the model still sees of them (a
      # partly kept ViT patch) is the constant value, never the original.
      xr = xb * kb[..., None] + removal.value * (1 - kb[..., None])
      return f.masked(xr[None], kb[None])[0]
    fill = _pixel_fill(xb[None], removal)[0]
    return f((xb * kb[..., None] + fill * (1 - kb[..., None]))[None])[0]

  return parallel.chunked_map(one, (x, kf), batch_size=batch_size)


def removed_logits(f: Any, x: Array, keep: Array, removal: Any = "constant", *,
                   batch_size: int | None = None) -> Array:
  """The model's logits ``[B, C]`` on `x` with the pixels where `keep` is 0 removed.

  Pixel strategies: ``f(x * keep + fill * (1 - keep))`` (a soft `keep` in
  [0, 1] blends); ``"token_drop"``/``"layer_mask"``: the model's mask-aware
  forward ``masked(x, keep)`` (`mask_forward`; it reads `keep` as ``> 0.5``).
  Compiled once per shape; the batch runs in chunks of `batch_size` examples
  (default None: all at once up to `saljax.parallel`'s automatic limit).

  Args:
    f: the model (for a model strategy, one `mask_forward` accepts).
    x: NHWC images ``[B, H, W, C]``.
    keep: keep-mask ``[B, H, W]`` (bool or float in [0, 1]).
    removal: a `Removal` or a kind's name (default ``"constant"``, 0.0).
  """
  removal = as_removal(removal)
  if removal is None:
    raise TypeError("removal: expected a saljax.removal.Removal or a kind's name, got None")
  x = V.check_input(x)
  if x.ndim != 4:
    raise ValueError(f"removed_logits: expected NHWC images [B, H, W, C], got shape {tuple(x.shape)}")
  keep = jnp.asarray(keep)
  if keep.shape != x.shape[:3]:
    raise ValueError(f"keep: expected a mask [B, H, W] = {list(x.shape[:3])}, got shape"
                     f" {tuple(keep.shape)}")
  batch_size = V.check_batch_size(batch_size)
  model = mask_forward(f, removal.kind) if removal.needs_model else M.as_model(f)
  return _removed_logits(model, x, keep, removal, batch_size)


# ----------------------------------------------------------------------------
# Threading a strategy through the removal-based explainers and metrics.


def resolve(removal: Any, f: Any, fill: Any, blur_sigma: float, method: str
            ) -> tuple[Any, float, KeepChannel | None]:
  """``(fill, blur_sigma, keep_model)`` for a method's ``removal=`` option.

  None: `fill` and `blur_sigma` unchanged, no model (today's behaviour). A
  pixel strategy: its fill shorthand (and its sigma for blur). A model
  strategy: `fill` unchanged and the `KeepChannel` model of `f` (checked
  here, before any work; `augment` checks `x`).
  """
  rem = as_removal(removal)
  if rem is None:
    return fill, blur_sigma, None
  if not rem.needs_model:
    sigma = rem.blur_sigma if rem.kind == "blur" and rem.blur_sigma is not None else blur_sigma
    return rem.fill(), sigma, None
  try:
    fwd = mask_forward(f, rem.kind)
  except TypeError as e:
    raise TypeError(f"{method}: {e}") from None
  return fill, blur_sigma, KeepChannel(fwd)


def augment(x: Array, fill: Array, labels: Array | None = None, method: str = "removal"):
  """`x` and `fill` with a keep channel (1 and 0) appended, and `labels` (when
  shaped like `x`) with the first channel's labels for it."""
  if x.ndim != 4:
    raise ValueError(f"{method}: removal='token_drop'/'layer_mask' masks NHWC images"
                     f" [B, H, W, C], got an input of shape {tuple(x.shape)}")
  xa = add_keep_channel(x, 1.0)
  fa = add_keep_channel(jnp.broadcast_to(fill, x.shape).astype(x.dtype), 0.0)
  if labels is not None and labels.shape == x.shape:
    labels = jnp.concatenate([labels, labels[..., :1]], -1)
  return xa, fa, labels


def switch(keep_model: Any, f: Any, x: Array, fill: Array, labels: Array | None, method: str):
  """``(f, x, fill, labels, done)`` an explainer runs with: unchanged and
  ``done`` the identity without a model kind; else the mask-aware model, the
  inputs with their keep channel (`augment`) and ``done = strip``."""
  if keep_model is None:
    return f, x, fill, labels, (lambda out: out)
  x, fill, labels = augment(x, fill, labels, method)
  return keep_model, x, fill, labels, strip


def strip(out: Any) -> Any:
  """A result computed on the augmented input, without the keep channel."""
  if isinstance(out, tuple):
    return tuple(strip(o) for o in out)
  return out[..., :-1]
