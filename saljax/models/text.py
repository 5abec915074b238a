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
embedding (`token_attribution`: integrated gradients or gradient x embedding
per token).

Tappable layers: ``embeddings`` (token embeddings ``[B, T, D]``, before the
position embedding is added), ``blocks_<i>`` (token activations),
``blocks_<i>/attn/probs`` (attention probabilities ``[B, heads, T, T]``),
``blocks_<i>/attn``, ``blocks_<i>/mlp``, ``norm``, ``head``. Default layer:
``embeddings``, where an attribution is one number per token. CAM methods read
``[B, T, D]`` activations as a ViT patch grid (cam.token_grid), which has no
meaning for a sentence: use `token_attribution` instead.
"""
from __future__ import annotations


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


TOKEN_METHODS = ("integrated_gradients", "gradient_x_embedding")


def token_attribution(tapped, tokens: jax.Array, target, *,
                      method: str = "integrated_gradients", steps: int = 32,
                      layer: str = "embeddings") -> jax.Array:
  """One attribution per token, ``[B, T]``, for the target class's logit.

  Computed at `layer` (the token embeddings by default) through the tapped
  forward, summed over the embedding width:

  - ``"integrated_gradients"`` (default; Sundararajan, Taly, Yan 2017,
    arXiv:1703.01365, at the embedding layer as Captum's
    ``LayerIntegratedGradients``): ``e * mean_k grad(alpha_k e)`` over
    `steps` midpoints ``alpha_k = (k + 1/2) / steps`` of the path from zero
    embeddings (the position embedding stays) to the embeddings ``e``; the
    attributions of a row sum to about ``logit(e) - logit(0)``.
  - ``"gradient_x_embedding"``: ``e * grad(e)`` (Denil, Demiraj, de Freitas
    2014, arXiv:1412.6815), one backward pass. On the trained trigger model
    of `saljax.models.quick.train_text` it saturates: its top token is a
    trigger in about 0.6 of the positive test sequences, against 1.0 for
    integrated gradients, which is why that is the default.

  Args:
    tapped: the tapped forward (``classifier.tapped``); a `Classifier` is
      read through its ``tapped``.
    tokens: int token ids ``[B, T]``.
    target: class indices ``[B]`` or one int.
    method: one of `TOKEN_METHODS`.
    steps: path points of integrated gradients (default 32).
    layer: the tapped layer (default ``"embeddings"``).
  """
  from saljax import _validation as V
  from saljax import model as M
  from saljax.explainers import layer as L
  if not isinstance(tapped, M.Tapped):
    if not isinstance(getattr(tapped, "tapped", None), M.Tapped):
      raise TypeError(f"token_attribution: expected a tapped model (classifier.tapped) or a"
                      f" Classifier, got {type(tapped).__name__}")
    tapped = tapped.tapped
  tokens = jnp.asarray(tokens)
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens: expected integer token ids [B, T], got shape"
                     f" {tuple(tokens.shape)} and dtype {tokens.dtype}")
  V.check_choice(method, "method", TOKEN_METHODS)
  steps = V.check_positive_int(steps, "steps")
  M.check_layers(tapped, [layer])
  # The registered layer methods do the work; this only fixes the baseline
  # (zero embeddings, the position embedding stays) and sums over the width.
  if method == "integrated_gradients":
    attr = L.layer_integrated_gradients(tapped, tokens, target, layer=layer,
                                        layer_baseline=0.0, steps=steps, rule="middle")
  else:
    attr = L.layer_gradient_x_activation(tapped, tokens, target, layer=layer)
  return attr.sum(-1)
