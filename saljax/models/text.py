"""A small transformer text classifier on integer token ids.

Token embedding plus a learned position embedding, pre-LayerNorm transformer
encoder blocks (the ViT block of `saljax.models.vit`: Vaswani et al. 2017,
arXiv:1706.03762, in the pre-norm form of Dosovitskiy et al. 2021), a final
LayerNorm, the mean over tokens (no class token, so every position reaches
the head the same way) and a dense head.

Input: int32 token ids ``[B, T]`` (``T`` up to `max_len`); output ``[B, C]``.
Pixel explainers take floating inputs, so token attributions are computed at
the ``embeddings`` layer through the tapped forward: the gradient with
respect to a zero tap there is the gradient with respect to each token's
embedding (`token_attribution` gives gradient x embedding per token, Denil,
Demiraj, de Freitas 2014, arXiv:1412.6815).

Tappable layers: ``embeddings`` (token embeddings ``[B, T, D]``, before the
position embedding is added), ``blocks_<i>`` (token activations),
``blocks_<i>/attn/probs`` (attention probabilities ``[B, heads, T, T]``),
``blocks_<i>/attn``, ``blocks_<i>/mlp``, ``norm``, ``head``. Default layer:
``embeddings``, where an attribution is one number per token. CAM methods read
``[B, T, D]`` activations as a ViT patch grid (cam.token_grid), which has no
meaning for a sentence: use `token_attribution` or a gradient at the
``embeddings`` layer instead.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from saljax.models.vit import EncoderBlock


class TextClassifier(nn.Module):
  """Embedding -> + position -> encoder blocks -> LayerNorm -> mean over tokens -> logits.

  Attributes:
    num_classes: logits size (default 2).
    vocab_size: number of token ids (default 64).
    max_len: longest sequence (size of the position table; default 64).
    dim: embedding width (default 32).
    depth: encoder blocks (default 1: enough for the trigger task of
      `saljax.data.synthetic.trigger_tokens`, and quick to train).
    num_heads: attention heads (default 2).
    mlp_dim: hidden width of each block's MLP (default 64).
  """
  num_classes: int = 2
  vocab_size: int = 64
  max_len: int = 64
  dim: int = 32
  depth: int = 1
  num_heads: int = 2
  mlp_dim: int = 64

  input_dtype = jnp.int32  # read by `saljax.models.wrap`

  @property
  def default_layer(self) -> str:
    return "embeddings"

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"TextClassifier: expected integer token ids [B, T], got shape"
                       f" {tuple(tokens.shape)} and dtype {tokens.dtype}")
    t = tokens.shape[1]
    if t > self.max_len:
      raise ValueError(f"TextClassifier: sequence length {t} exceeds max_len {self.max_len}")
    x = nn.Embed(self.vocab_size, self.dim, embedding_init=nn.initializers.normal(0.02),
                 name="embeddings")(tokens)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, self.max_len, self.dim))
    x = x + pos[:, :t].astype(x.dtype)
    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, self.mlp_dim, name=f"blocks_{i}")(x)
    x = nn.LayerNorm(name="norm")(x)
    return nn.Dense(self.num_classes, name="head")(x.mean(axis=1))


def text_classifier(num_classes: int = 2, vocab_size: int = 64, max_len: int = 64,
                    dim: int = 32, depth: int = 1, num_heads: int = 2,
                    mlp_dim: int = 64) -> TextClassifier:
  """A `TextClassifier` (int32 tokens ``[B, T]`` -> logits ``[B, num_classes]``)."""
  return TextClassifier(num_classes=num_classes, vocab_size=vocab_size, max_len=max_len,
                        dim=dim, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim)


def token_attribution(tapped, tokens: jax.Array, target: jax.Array,
                      layer: str = "embeddings") -> jax.Array:
  """Gradient x embedding per token, ``[B, T]``, for the target class's logit.

  The gradient with respect to a zero tap on `layer` (the token embeddings by
  default) times that layer's activation, summed over the embedding width
  (Denil et al. 2014). Takes the tapped forward (``classifier.tapped``), int
  token ids ``[B, T]`` and class indices ``[B]``; a `Classifier` is read
  through its ``tapped``.
  """
  from saljax import model as M
  if not isinstance(tapped, M.Tapped):
    if not isinstance(getattr(tapped, "tapped", None), M.Tapped):
      raise TypeError(f"token_attribution: expected a tapped model (classifier.tapped) or a"
                      f" Classifier, got {type(tapped).__name__}")
    tapped = tapped.tapped
  tokens = jnp.asarray(tokens)
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens: expected integer token ids [B, T], got shape"
                     f" {tuple(tokens.shape)} and dtype {tokens.dtype}")
  if layer not in tapped.layer_names:
    raise ValueError(f"layer: unknown layer {layer!r}; the model has {list(tapped.layer_names)}")
  target = jnp.broadcast_to(jnp.asarray(target, jnp.int32), tokens.shape[:1])
  zero = tapped.zero_taps(tokens, [layer])[layer]
  return _gradient_x_embedding(tapped, tokens, target, zero, layer=layer)


@functools.partial(jax.jit, static_argnames=("layer",))
def _gradient_x_embedding(tapped, tokens, target, zero, *, layer):
  # The tapped model is a pytree argument: another checkpoint reuses the program.
  def score(tap):
    logits, acts = tapped(tokens, {layer: tap})
    return jnp.take_along_axis(logits, target[:, None], axis=1).sum(), acts[layer]

  g, act = jax.grad(score, has_aux=True)(zero)
  return (g * act).sum(-1)
