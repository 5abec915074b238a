"""Prompt-CAM maps: the attention of the target class's prompt to the patches.

Chowdhury et al. 2025, "Prompt-CAM: Making Vision Transformers Interpretable
for Fine-Grained Analysis", CVPR 2025, arXiv:2501.09333. The model is a
`saljax.models.prompt_cam.PromptCAM` (class prompts on a frozen ViT), tapped
with `saljax.model.from_linen`; this module reads its last block's attention.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from saljax import _validation as V
from saljax import model as M
from saljax import parallel
from saljax.explainers import attention
from saljax.explainers import cam
from saljax.explainers._registry import REGISTRY

Array = jax.Array

HEAD_LAYER = "prompt_head"


def patch_grid(image_hw, num_patches: int, name: str) -> tuple[int, int]:
  """``(h, w)`` of a patch grid of `num_patches` tokens on an image of
  `image_hw`, for square patches (non-square images too, e.g. BlockMNIST's
  ``2s x s``), or a ValueError."""
  hh, ww = int(image_hw[0]), int(image_hw[1])
  w = math.isqrt(max(num_patches * ww // max(hh, 1), 0))
  for cand in (w - 1, w, w + 1):
    if cand > 0 and num_patches % cand == 0:
      h = num_patches // cand
      if hh % h == 0 and ww % cand == 0 and hh // h == ww // cand:
        return h, cand
  raise ValueError(
      f"layer {name!r}: {num_patches} patch tokens do not tile an image of {hh}x{ww} with square"
      " patches")


def check_prompt_cam(f, x, layer=None) -> tuple[str, tuple[int, int, int]]:
  """The attention layer and ``(h, w, prefix)`` of a tapped Prompt-CAM model,
  or a clear error when `f` is another model."""
  shapes = cam.layer_shapes(f, x)
  head = shapes.get(HEAD_LAYER)
  if head is None or len(head.shape) != 3 or head.shape[0] != x.shape[0] or head.shape[2] != 1:
    got = "no layer 'prompt_head'" if head is None else f"'prompt_head' of shape {tuple(head.shape)}"
    raise ValueError(
        "expected a Prompt-CAM model (saljax.models.prompt_cam.PromptCAM tapped with"
        " saljax.model.from_linen: a shared scorer 'prompt_head' [B, C, 1] on its C class"
        f" prompts), got a model with {got}; its layers are {list(f.layer_names)[:12]}...")
  # The prompts' count from the scorer, not the logits: a scored model
  # (several targets at once) has other outputs.
  c = int(head.shape[1])
  if layer is None:
    # Found by name as attention.attention_layers, without its square-grid check.
    found = [n for n, v in shapes.items() if len(v.shape) == 4 and v.shape[-1] == v.shape[-2]
             and attention._ATTN_RE.search(n)]
    if not found:
      raise ValueError("layer: found no attention-probability layer [B, heads, T, T] in the"
                       f" Prompt-CAM model; its layers are {list(f.layer_names)}")
    layer = found[-1]
  if not isinstance(layer, str):
    raise TypeError(f"layer: expected one layer name, got {layer!r}")
  M.check_layers(f, (layer,))
  s = tuple(shapes[layer].shape)
  if len(s) != 4 or s[-1] != s[-2]:
    raise ValueError(f"layer: {layer!r} is not an attention-probability layer [B, heads, T, T],"
                     f" got shape {s}")
  p = c + 1  # C prompts, then the class token, then the patches
  if s[-1] <= p:
    raise ValueError(f"layer: {layer!r} has {s[-1]} tokens, expected more than the {p} prompts and"
                     " class token")
  h, w = patch_grid(x.shape[1:3], s[-1] - p, layer)
  return layer, (h, w, p)


HEAD_CHOICES = ("mean", "greedy")


def _greedy_order(f, xi, ti, a, layer):
  """Heads of one example from most to least important, by the official
  Prompt-CAM code's greedy blurring (``prune_and_plot_ranked_heads``).

  Blurring head ``h`` sets the pre-softmax logits of the target prompt's row
  in `layer` to 0, so that row becomes uniform (``1/T`` on every token).
  Here this is a tap on the probabilities that adds ``1/T - p`` to that row,
  which gives the same forward: the probabilities of `layer` do not depend on
  a change made after them. Each round blurs, on top of the heads already
  blurred, every remaining head in turn (one batch of ``heads`` forwards)
  and removes the one whose blurring leaves the highest softmax probability
  of the target: the least important. The order of removal, reversed, ranks
  the heads. Ties go to the lower index, as the official strict ``>``."""
  nh, t = a.shape[0], a.shape[-1]
  row = (1.0 / t - a[:, ti, :]).astype(a.dtype)                  # [heads, T]
  rows = jnp.zeros((nh,) + a.shape, a.dtype).at[:, :, ti, :].set(
      jnp.broadcast_to(row, (nh,) + row.shape))                    # [cand, heads, T, T]
  xs = jnp.broadcast_to(xi[None], (nh,) + xi.shape)
  eye = jnp.eye(nh, dtype=bool)

  def step(blurred, _):
    mask = (blurred[None, :] | eye).astype(a.dtype)                 # [cand, heads]
    logits = f(xs, {layer: rows * mask[:, :, None, None]})[0]
    prob = jax.nn.softmax(attention._f32_or_wider(logits), axis=-1)[:, ti]
    prob = jnp.where(blurred, -jnp.inf, prob)                       # already removed
    out = jnp.argmax(prob)                                          # first of the ties
    return blurred.at[out].set(True), out

  _, removed = jax.lax.scan(step, jnp.zeros((nh,), bool), None, length=nh)
  return removed[::-1]


@M.jit(static_argnames=("layer", "grid", "per_head", "normalize", "heads", "top_k", "batch_size"))
def _prompt_cam(f, x, target, layer, grid, per_head, normalize, heads, top_k, batch_size):
  h, w, p = grid

  def one(xt):
    xi, ti = xt
    a = attention._f32_or_wider(f(xi[None])[1][layer][0])  # [heads, T, T]
    rows = a[:, ti, p:]                                     # prompt ti -> patches, [heads, h*w]
    if normalize:  # a distribution over patches: the mass on prompts/cls is not a place
      rows = rows / jnp.maximum(rows.sum(-1, keepdims=True), 1e-12)
    maps = rows.reshape(a.shape[0], h, w)
    if heads == "greedy":  # the top_k heads by the greedy ranking, most important first
      maps = maps[_greedy_order(f, xi, ti, a, layer)[:top_k]]
    return maps if per_head else maps.mean(0)

  return parallel.chunked_map(one, (x, target), batch_size=batch_size)


@M.jit(static_argnames=("layer", "batch_size"))
def _rank_heads(f, x, target, layer, batch_size):
  def one(xt):
    xi, ti = xt
    a = f(xi[None])[1][layer][0]
    return _greedy_order(f, xi, ti, a, layer).astype(jnp.int32)

  return parallel.chunked_map(one, (x, target), batch_size=batch_size)


def rank_heads(f, x, target, *, layer: str | None = None, batch_size: int | None = None) -> Array:
  """Prompt-CAM's trait identification (Chowdhury et al. 2025, and
  the official code's greedy head pruning): ``[B, heads]`` int, the heads of
  `layer` (default the last attention layer) from most to least important
  for the target class.

  Round by round, the head whose blurring (the target prompt's attention row
  made uniform, on top of the heads blurred so far) leaves the target's
  softmax probability highest is removed; the reversed order of removal is
  the ranking (`_greedy_order`). ``heads^2`` forwards per example, batched:
  a ``lax.scan`` over the rounds, each round one batch of candidates.
  `batch_size` bounds the examples per vmapped chunk.
  """
  x, target = attention._prepare("rank_heads", f, x, target, needs_target=True)
  try:
    layer, _ = check_prompt_cam(f, x, layer)
  except (TypeError, ValueError) as e:
    raise type(e)(f"rank_heads: {e}") from e
  batch_size = V.check_batch_size(batch_size)
  return _rank_heads(f, x, target.astype(jnp.int32), layer, batch_size)


def _prompt_cam_evaluations(o, f, x) -> int:
  """One forward; with ``heads="greedy"`` also ``heads`` rounds of ``heads``
  candidate forwards (`_greedy_order`)."""
  if o.get("heads", "mean") != "greedy":
    return 1
  layer, _ = check_prompt_cam(f, x, o.get("layer"))
  nh = int(cam.layer_shapes(f, x)[layer].shape[1])
  return 1 + nh * nh


@REGISTRY.register("prompt_cam", family="attention", returns="layer", needs=("vit", "prompt_cam"),
    evaluations=_prompt_cam_evaluations, backward=False, model_output="unused", year=2025)
def prompt_cam(f, x, target, *, key=None, layer: str | None = None, per_head: bool = False,
               normalize: bool = True, heads: str = "mean", top_k: int = 1,
               batch_size: int | None = None) -> Array:
  """Prompt-CAM (Chowdhury et al. 2025, "Prompt-CAM: Making Vision Transformers
  Interpretable for Fine-Grained Analysis", arXiv:2501.09333): the last-block
  attention of the target class's prompt to the patch tokens, on the patch
  grid.

  Needs a `saljax.models.prompt_cam.PromptCAM` tapped with
  `saljax.model.from_linen` (tokens ``[C prompts, class token, patches]``);
  any other model is refused before work. Non-square images (BlockMNIST's
  ``2s x s``) are fine: the grid is read from the input's aspect.

  Args:
    layer: the attention-probability layer ``[B, heads, T, T]`` (default the
      last one, ``blocks_<L-1>/attn/probs``: the paper reads the last layer,
      whose prompt outputs are scored).
    per_head: return the heads' maps ``[B, heads, h, w]`` (the paper's
      multi-head maps, each head a trait; with ``heads="greedy"`` the `top_k`
      selected ones, ``[B, top_k, h, w]``, most important first) instead of
      their mean ``[B, h, w]`` (default: one map per example for metrics).
    heads: ``"mean"`` (default): every head of the layer; ``"greedy"``: the
      `top_k` most important heads by the paper's greedy blurring
      (`rank_heads`; ``heads^2`` extra forwards per example). The mean stays
      the default: the paper ranks heads to show traits one by one, it does
      not define one map per image.
    top_k: how many of the greedy ranking's heads are kept (default 1: the
      most important trait); only with ``heads="greedy"``.
    normalize: divide each head's row by its mass on the patches, so each map
      sums to 1 over the patches (default True: the attention a prompt puts on
      the other prompts and the class token varies per image and is no place
      in the image; False returns the raw probabilities).
    batch_size: examples per vmapped chunk (default None: all at once).
  """
  x, target = attention._prepare("prompt_cam", f, x, target, needs_target=True)
  try:
    layer, grid = check_prompt_cam(f, x, layer)
  except (TypeError, ValueError) as e:
    raise type(e)(f"prompt_cam: {e}") from e
  V.check_choice(heads, "prompt_cam: heads", HEAD_CHOICES)
  top_k = V.check_positive_int(top_k, "prompt_cam: top_k")
  nh = cam.layer_shapes(f, x)[layer].shape[1]
  if heads == "greedy" and top_k > nh:
    raise ValueError(f"prompt_cam: top_k: expected at most the {nh} heads of {layer!r}, got {top_k}")
  batch_size = V.check_batch_size(batch_size)
  return _prompt_cam(f, x, target.astype(jnp.int32), layer, grid, bool(per_head), bool(normalize),
                     heads, top_k if heads == "greedy" else 1, batch_size)
