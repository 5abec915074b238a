"""Prompt-CAM: class-specific prompts on a frozen ViT.

Chowdhury et al. 2025, "Prompt-CAM: Making Vision Transformers Interpretable
for Fine-Grained Analysis", CVPR 2025, arXiv:2501.09333 (official code:
github.com/Imageomics/Prompt_CAM). Visual Prompt Tuning (Jia et al. 2022,
arXiv:2203.12119) with one prompt token per class and a different head: the
final (LayerNorm-ed) embedding of class c's prompt goes through a shared
linear scorer ``w in R^D`` (``prompt_head``, one output), and that score is
class c's logit. To score its class high, the true class's prompt must attend,
in the last block, to the patches that tell its class apart; that attention
(per head, ``blocks_<L-1>/attn/probs`` rows of the prompts) is the map, read by
`saljax.explainers.prompt_cam`.

`PromptCAM` reuses `saljax.models.vit`'s blocks under the same parameter
names as `saljax.models.vit.ViT` (``patch_embed``, ``cls_token``,
``pos_embed``, ``blocks_<i>``, ``norm``), so a trained ViT's parameters load
as they are (`with_backbone`); only ``prompts`` and ``prompt_head``
(`TRAINABLE`) are trained, the backbone stays frozen.

Token layout inside every block: ``[prompt_0 .. prompt_{C-1}, cls, patches]``
(the official code prepends prompts before the class token), so the tapped
attention ``[B, heads, T, T]`` has ``T = C + 1 + h*w`` and
``num_prefix_tokens = C + 1``.

Variants (the paper's Sec. 2.4):

* ``"deep"`` (default, the paper's and the official code's main variant, as
  in VPT-deep): a fresh set of ``C`` prompts enters every block and the
  previous block's prompt outputs are dropped; the last block's prompts are
  the class-specific ones that are scored (the earlier sets act as
  class-agnostic prompts, one per class slot).
* ``"shallow"``: one set of ``C`` prompts enters the first block and is
  carried through all blocks.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from saljax import _validation as V
from saljax.models.vit import CONFIGS, EncoderBlock, embed

VARIANTS = ("deep", "shallow")
# Top-level parameter collections that Prompt-CAM trains; the rest is the frozen ViT.
TRAINABLE = ("prompts", "prompt_head")
# ViT parameters that Prompt-CAM does not use (the class token's head).
UNUSED_VIT_PARAMS = ("head",)


def _prompt_init(patch: int, dim: int):
  """VPT's initialization: uniform in +-sqrt(6 / (3 p^2 + D)) (Jia et al., the
  Xavier bound of the patch embedding with 3 input channels), as the official
  Prompt-CAM code."""
  bound = math.sqrt(6.0 / float(3 * patch * patch + dim))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class PromptCAM(nn.Module):
  """A ViT (`saljax.models.vit.ViT`'s layers and names) with class prompts:
  ``x [B, H, W, C_in] -> logits [B, num_classes]``, one per class prompt.

  Attributes:
    num_classes: C, the number of class prompts (and logits).
    patch, dim, depth, num_heads, mlp_dim: the backbone ViT's sizes (must
      match the checkpoint loaded with `with_backbone`).
    variant: ``"deep"`` (default) or ``"shallow"`` (module docstring).
  """
  num_classes: int = 10
  patch: int = 16
  dim: int = 192
  depth: int = 12
  num_heads: int = 3
  mlp_dim: int = 768
  variant: str = "deep"

  @property
  def num_prefix_tokens(self) -> int:
    """Tokens before the patches in every block: the C prompts and the class token."""
    return self.num_classes + 1

  @property
  def default_layer(self) -> str:
    """The layer Prompt-CAM reads: the last block's attention probabilities."""
    return f"blocks_{self.depth - 1}/attn/probs"

  @nn.compact
  def __call__(self, x, train: bool = False):
    V.check_choice(self.variant, "variant", VARIANTS)
    b = x.shape[0]
    c, d = self.num_classes, self.dim
    x = embed(self, x, "PromptCAM")  # the backbone's embedding (saljax.models.vit's names)
    sets = self.depth if self.variant == "deep" else 1
    prompts = self.param("prompts", _prompt_init(self.patch, d), (sets, c, d))
    for i in range(self.depth):
      if i < sets:  # prompts carry no position embedding (VPT)
        x = jnp.concatenate([jnp.broadcast_to(prompts[i], (b, c, d)).astype(x.dtype), x], axis=1)
      x = EncoderBlock(self.num_heads, self.mlp_dim, name=f"blocks_{i}")(x)
      if self.variant == "deep" and i < self.depth - 1:
        x = x[:, c:]  # the next block brings its own prompts
    x = nn.LayerNorm(name="norm")(x)
    # One shared scorer on each class prompt's output: [B, C, 1] -> [B, C].
    return nn.Dense(1, name="prompt_head")(x[:, :c])[..., 0]


def prompt_cam(name: str = "vit_tiny", num_classes: int = 10, *, variant: str = "deep",
               **overrides) -> PromptCAM:
  """A `PromptCAM` on the ViT sizes of `saljax.models.vit.CONFIGS[name]`, with overrides."""
  if name not in CONFIGS:
    raise ValueError(f"name: expected one of {sorted(CONFIGS)}, got {name!r}")
  V.check_choice(variant, "variant", VARIANTS)
  patch, dim, depth, heads, mlp = CONFIGS[name]
  cfg = dict(patch=patch, dim=dim, depth=depth, num_heads=heads, mlp_dim=mlp)
  cfg.update(overrides)
  return PromptCAM(num_classes=num_classes, variant=variant, **cfg)


def is_trainable(path: tuple[str, ...]) -> bool:
  """Whether a parameter (by its path of keys) is one Prompt-CAM trains."""
  return bool(path) and path[0] in TRAINABLE


def param_labels(params: Any) -> Any:
  """``"train"`` / ``"freeze"`` per parameter leaf, for ``optax.multi_transform``."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: "train" if is_trainable(tuple(getattr(k, "key", str(k)) for k in p))
      else "freeze", params)


def with_backbone(params: Any, vit_params: Any) -> dict:
  """`params` of a `PromptCAM` with every backbone parameter replaced by the
  trained ViT's (`saljax.models.vit.ViT` of the same sizes); the prompts and
  the scorer are kept. Raises ValueError naming what differs when the ViT's
  parameters do not fit."""
  params = dict(params)
  vit_params = {k: v for k, v in dict(vit_params).items() if k not in UNUSED_VIT_PARAMS}
  backbone = sorted(k for k in params if k not in TRAINABLE)
  if sorted(vit_params) != backbone:
    raise ValueError(
        f"vit_params: expected the ViT parameters {backbone} (plus 'head'), got {sorted(vit_params)}")
  flat = lambda t: {jax.tree_util.keystr(k): (tuple(jnp.shape(a)), str(jnp.result_type(a)))
                    for k, a in jax.tree_util.tree_flatten_with_path(t)[0]}
  want, got = flat({k: params[k] for k in backbone}), flat(vit_params)
  bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
  if bad:
    raise ValueError(
        "vit_params: the ViT's parameters do not match the Prompt-CAM backbone (same patch, dim,"
        f" depth, heads and mlp_dim expected); differing: "
        + ", ".join(f"{k}: expected {want.get(k)}, got {got.get(k)}" for k in bad[:4]))
  params.update(vit_params)
  return params
