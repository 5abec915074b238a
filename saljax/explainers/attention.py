"""ViT methods: attention rollout, Grad-CAM on ViT tokens, class-token attention maps.

All take a tapped model (`saljax.model.Tapped`) and return maps on the patch
grid, ``[B, h, w]``; `saljax.explainers.cam.upsample` maps them to input size.

What the model must expose (the zoo's ViT follows this):

* Token activations ``[B, T, D]`` with ``T = num_prefix_tokens + h*w`` (the
  class token first, default 1 prefix token) and a square patch grid, as the
  outputs of the encoder blocks. Blocks are found by name: the last path
  component matches ``blocks_3``, ``block_3``, ``Block_3``, ``layers_3``,
  ``encoderblock_3``... (``_BLOCK_RE``); pass ``layer=`` otherwise.
* Attention probabilities ``[B, heads, T, T]`` (rows sum to 1, after the
  softmax) as the output of a submodule's ``__call__``, so that
  `saljax.model.from_linen` / `from_nnx` can tap them (Flax's
  ``MultiHeadDotProductAttention`` keeps them internal: compute the softmax
  in a small submodule, e.g. ``AttentionProbs(name="probs")``). Such layers
  are found by name: the last path component contains ``prob``, ``attn``,
  ``attention`` or ``weights``, and the activation is ``[B, H, T, T]``; pass
  ``layer=`` otherwise.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from saljax import _validation as V
from saljax import model as M
from saljax.explainers import cam
from saljax.explainers._registry import REGISTRY

Array = jax.Array

_BLOCK_RE = re.compile(
    r"(?:^|/)(?:blocks?|layers?|encoderblock|encoder_layer|encoder_block|transformerblock)"
    r"_?(\d+)$", re.IGNORECASE)
_ATTN_RE = re.compile(r"(prob|attn|attention|weights)[^/]*$", re.IGNORECASE)


def _check_tapped(f, method: str = "ViT methods"):
  if not isinstance(f, M.Tapped):
    raise TypeError(
        f"{method}: expected a tapped model (saljax.model.Tapped, see saljax.model.from_linen"
        f" / from_nnx), got {V.describe(f)}")


def _prepare(method: str, f, x, target, *, needs_target: bool):
  """The checks every method runs (tapped model, input, target, a model that
  evaluates abstractly), before any work; returns ``(x, target)``.

  Errors name `method`: without these checks a wrong rank, a channel-first
  input or a non-jittable forward surfaced as a raw flax/JAX error from the
  abstract trace. `target` may be None when the method ignores it
  (`needs_target=False`); a given target is validated all the same.
  """
  _check_tapped(f, method)
  try:
    x = V.check_input(x)
    # Patch grids and upsampling read x as NHWC images.
    if x.ndim != 4:
      raise ValueError(f"x: expected images [B, H, W, C] (rank 4), got shape {tuple(x.shape)}")
    if not needs_target and (target is None or (isinstance(target, str)
                                                and target == M.PREDICTED)):
      # Valid and ignored: check only that the model takes x and returns logits
      # [B, C], without the forward pass "predicted" would cost.
      M.output_shape(f, x)
    else:
      target = M.resolve_target(f, x, target)
  except (TypeError, ValueError) as e:
    raise (TypeError if isinstance(e, TypeError) else ValueError)(f"{method}: {e}") from e
  try:
    cam.layer_shapes(f, x)  # cached: the helpers below trace nothing more
  except Exception as e:  # the tapped trace itself failed (not jittable, bad taps)
    raise ValueError(
        f"{method}: expected a tapped model that evaluates abstractly (jit-traceable) on"
        f" an input of shape {tuple(x.shape)} and dtype {x.dtype}, got"
        f" {type(e).__name__}: {e}") from e
  return x, target


def block_layers(f: M.Tapped, x: Array, num_prefix_tokens: int = 1) -> list[str]:
  """Names of the transformer blocks (token activations on a grid), in depth order."""
  shapes = cam.layer_shapes(f, x)
  found = []
  for name, s in shapes.items():
    m = _BLOCK_RE.search(name)
    if m and len(s.shape) == 3:
      try:
        cam.token_grid(s.shape, name, num_prefix_tokens, cam.image_hw(x))
      except ValueError:
        continue
      found.append((int(m.group(1)), name))
  return [n for _, n in sorted(found)]


def attention_layers(f: M.Tapped, x: Array, num_prefix_tokens: int = 1) -> list[str]:
  """Names of the attention-probability layers ``[B, H, T, T]``, in call order."""
  out = []
  for name, s in cam.layer_shapes(f, x).items():
    if len(s.shape) == 4 and s.shape[-1] == s.shape[-2] and _ATTN_RE.search(name):
      try:
        cam.token_grid((s.shape[0], s.shape[-1], 1), name, num_prefix_tokens, cam.image_hw(x))
      except ValueError:
        continue
      out.append(name)
  return out


def _check_attention(f, x, layers, num_prefix_tokens):
  shapes = cam.layer_shapes(f, x)
  if layers is None:
    layers = attention_layers(f, x, num_prefix_tokens)
    if not layers:
      raise ValueError(
          "layer: found no attention-probability layer [B, heads, T, T] (named like"
          " '.../probs' or '.../attn'); tap the softmax output in a submodule and pass"
          f" layer=[...]; the model has {list(f.layer_names)}")
  names, _ = cam._layer_list(layers)
  M.check_layers(f, names)
  grid = None
  for k in names:
    s = tuple(shapes[k].shape)
    if len(s) != 4 or s[-1] != s[-2]:
      raise ValueError(
          f"layer: {k!r} is not an attention-probability layer [B, heads, T, T], got shape {s}")
    g = cam.token_grid((s[0], s[-1], 1), k, num_prefix_tokens, cam.image_hw(x))
    if grid is not None and g != grid:
      raise ValueError(f"layer: attention layers disagree on the token grid: {grid} vs {g}")
    grid = g
  return names, grid


# ----------------------------------------------------------------------------
# Attention rollout.

HEAD_FUSIONS = ("mean", "max", "min")


def _f32_or_wider(a: Array) -> Array:
  """Attention probabilities in float32 at least: bf16 is promoted, float64 (x64
  models) kept, so maps and their gradients keep the model's precision."""
  return a.astype(jnp.promote_types(a.dtype, jnp.float32))


@M.jit(static_argnames=("names", "grid", "head_fusion", "query"))
def _rollout(f, x, names, grid, head_fusion, discard_ratio, query):
  h, w, p = grid
  _, acts = f(x)
  rollout = None
  for name in names:
    a = _f32_or_wider(acts[name])
    a = {"mean": a.mean, "max": a.max, "min": a.min}[head_fusion](axis=1)   # [B, T, T]
    b, t, _ = a.shape
    # jacobgil/vit-explain: zero the weakest fraction of entries, never the
    # attention to the class token (column 0).
    flat = a.reshape(b, -1)
    thr = jnp.quantile(flat, discard_ratio, axis=1, method="lower")[:, None, None]
    keep = (a > thr) | (jnp.arange(t)[None, None, :] < p) | (discard_ratio <= 0)
    a = jnp.where(keep, a, 0.0)
    a = 0.5 * a + 0.5 * jnp.eye(t, dtype=a.dtype)
    a = a / jnp.maximum(a.sum(-1, keepdims=True), 1e-12)
    rollout = a if rollout is None else jnp.einsum("bij,bjk->bik", a, rollout)
  return rollout[:, query, p:].reshape(x.shape[0], h, w)


@REGISTRY.register("attention_rollout",
    differentiable=False, note="its derivative disagrees with finite differences; use vit_gradcam under jax.grad", family="attention", returns="layer", needs=("vit",),
    evaluations=1, backward=False)
def attention_rollout(f, x, target=None, *, key=None, layer: str | Sequence[str] | None = None,
                      head_fusion: str = "mean", discard_ratio: float = 0.0,
                      num_prefix_tokens: int = 1, query_token: int = 0) -> Array:
  """Attention rollout (Abnar and Zuidema 2020, "Quantifying Attention Flow in
  Transformers", arXiv:2005.00928).

  Each layer's attention, fused over heads, gets the residual connection as
  ``A' = 0.5 A + 0.5 I`` with rows renormalized; the rollout is the product
  ``A'_L ... A'_1``, and the map is the row of the query token (the class
  token) over the patch tokens, reshaped to the patch grid. Class-agnostic:
  `target` may be None and is otherwise validated, then ignored.

  Args:
    layer: an attention-probability layer ``[B, heads, T, T]`` or a sequence
      of them in forward order (default: all found by name, see the module docstring).
    head_fusion: "mean" (default, the paper), "max" or "min" (jacobgil's
      vit-explain options).
    discard_ratio: fraction of the weakest attention entries set to 0 per
      layer before adding I (vit-explain); default 0.0, the paper's rollout.
    num_prefix_tokens: tokens before the patches (default 1, the class token).
    query_token: the token whose row is read (default 0, the class token).
  """
  x, _ = _prepare("attention_rollout", f, x, target, needs_target=False)
  V.check_choice(head_fusion, "head_fusion", HEAD_FUSIONS)
  if not 0.0 <= discard_ratio < 1.0:
    raise ValueError(f"discard_ratio: expected a float in [0, 1), got {discard_ratio!r}")
  names, grid = _check_attention(f, x, layer, num_prefix_tokens)
  q = V.check_positive_int(query_token, "query_token", minimum=0)
  if q >= grid[2] + grid[0] * grid[1]:
    raise ValueError(f"query_token: expected an index below {grid[2] + grid[0] * grid[1]}, got {q}")
  return _rollout(f, x, names, grid, head_fusion, jnp.asarray(discard_ratio, jnp.float32), q)


# ----------------------------------------------------------------------------
# Grad-CAM on ViT tokens.


@REGISTRY.register("vit_gradcam", family="attention", returns="layer", needs=("vit",),
    evaluations=1, backward=True)
def vit_gradcam(f, x, target, *, key=None, layer: Any = None, relu: bool = True,
                num_prefix_tokens: int = 1) -> Array:
  """Grad-CAM on a ViT (Selvaraju et al. 2017, arXiv:1610.02391, as applied to
  ViTs by pytorch-grad-cam): the class token is dropped, the patch tokens are
  reshaped to the grid ``[B, h, w, D]`` and Grad-CAM runs on that, with the
  token dimension as channels.

  Args:
    layer: token layers ``[B, T, D]`` (a name or a sequence); default the
      output of the block before the last, since the last block's patch
      tokens barely mix into the class token that the head reads (only the
      class token of the last block reaches the logits, so gradients at its
      patch tokens are zero).
    relu: final ReLU (default True).
    num_prefix_tokens: tokens before the patches (default 1, the class token).
  """
  x, target = _prepare("vit_gradcam", f, x, target, needs_target=True)
  if layer is None:
    blocks = block_layers(f, x, num_prefix_tokens)
    if len(blocks) < 2:
      raise ValueError(
          "layer: could not find two transformer blocks by name (e.g. 'blocks_0',"
          f" 'Block_1'); pass layer=...; the model has {list(f.layer_names)}")
    layer = blocks[-2]
  names, _ = cam._layer_list(layer)
  M.check_layers(f, names)
  shapes = cam.layer_shapes(f, x)
  for k in names:
    if len(shapes[k].shape) != 3:
      raise ValueError(
          f"layer {k!r}: ViT Grad-CAM needs token activations [B, {num_prefix_tokens} + h*w, D],"
          f" got shape {tuple(shapes[k].shape)}")
  return cam._run_grad_cam("gradcam", f, x, target, layer, relu, num_prefix_tokens)


# ----------------------------------------------------------------------------
# Class-token (Prompt-CAM) attention maps.


@M.jit(static_argnames=("layer", "grid", "per_head"))
def _token_attention(f, x, query, layer, grid, per_head):
  h, w, p = grid
  _, acts = f(x)
  a = _f32_or_wider(acts[layer])                                         # [B, H, T, T]
  rows = jnp.take_along_axis(a, query[:, None, None, None], axis=2)[:, :, 0, p:]
  maps = rows.reshape(a.shape[0], a.shape[1], h, w)
  return maps if per_head else maps.mean(1)


@REGISTRY.register("class_token_attention", family="attention", returns="layer", needs=("vit",),
    evaluations=1, backward=False)
def class_token_attention(f, x, target=None, *, key=None, layer: str | None = None,
                          per_head: bool = False, query_token: Any = 0, prompt_offset: int = 0,
                          num_prefix_tokens: int = 1) -> Array:
  """Attention of one query token to the patch tokens, per head (Chowdhury et
  al. 2025, "Prompt-CAM: Making Vision Transformers Interpretable for
  Fine-Grained Analysis", arXiv:2501.09333; with the class token as query this
  is the last-layer attention map of Caron et al. 2021, DINO, arXiv:2104.14294).

  Args:
    layer: an attention-probability layer ``[B, heads, T, T]`` (default: the
      last one found by name).
    per_head: return ``[B, heads, h, w]`` (Prompt-CAM's per-head maps)
      instead of the mean over heads ``[B, h, w]`` (default).
    query_token: the query token index (default 0, the class token), or
      ``"target"``: Prompt-CAM's class-specific prompts, the query for class c
      being token ``prompt_offset + c``.
    prompt_offset: index of the first class prompt (``query_token="target"``).
    num_prefix_tokens: tokens before the patches (class token and prompts).
  """
  # The target picks the query only with query_token="target"; otherwise it is
  # ignored, but a given one is still validated.
  x, target = _prepare("class_token_attention", f, x, target,
                       needs_target=isinstance(query_token, str) and query_token == "target")
  names, grid = _check_attention(f, x, None if layer is None else [layer], num_prefix_tokens)
  layer = names[-1]
  b = x.shape[0]
  if isinstance(query_token, str):
    V.check_choice(query_token, "query_token", ("target",))
    target = M.resolve_target(f, x, target)
    query = target + V.check_positive_int(prompt_offset, "prompt_offset", minimum=0)
    limit = grid[2]
    if M.output_shape(f, x)[1] + prompt_offset > limit:
      raise ValueError(
          f"query_token='target': prompts {prompt_offset}..{prompt_offset} + C - 1 must lie"
          f" within the {limit} prefix tokens (num_prefix_tokens)")
  else:
    q = V.check_positive_int(query_token, "query_token", minimum=0)
    if q >= grid[2] + grid[0] * grid[1]:
      raise ValueError(f"query_token: expected an index below {grid[2] + grid[0] * grid[1]}, got {q}")
    query = jnp.full((b,), q, jnp.int32)
  return _token_attention(f, x, query.astype(jnp.int32), layer, grid, bool(per_head))


# Prompt-CAM lives in its own module (it needs the Prompt-CAM model); re-exported
# here, its family's module. Imported last: prompts imports this module.
from saljax.explainers.prompts import prompt_cam  # noqa: E402,F401
