"""EfficientNet-Lite: architecture equals the PyTorch reference for Lite0..4."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saljax.models import efficientnet as E
from saljax.models import layers
from saljax.models import pretrained as P


@pytest.mark.parametrize("variant", [0, 1, 2, 3, 4])
def test_every_lite_variant_matches_the_reference_state_dict(variant):
  # The reference's own random state dict converts one to one: same blocks,
  # same channel rounding, same kernel sizes, nothing left over or missing.
  import torch  # the test extra installs it
  from efficientnet_lite_pytorch import EfficientNet
  torch.manual_seed(0)
  ref = EfficientNet.from_name(f"efficientnet-lite{variant}")
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  module = E.efficientnet_lite(variant)
  variables = P.convert_state_dict(sd, module)
  assert len(E.lite_blocks(module.width, module.depth)) == len(ref._blocks)
  assert layers.count_params(variables["params"]) == sum(
      int(v.numel()) for k, v in ref.state_dict().items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


def test_round_filters_follows_the_tf_rule():
  assert E.round_filters(32, 1.0) == 32
  assert E.round_filters(24, 1.1) == 24  # 26.4 -> 24 (within 10%)
  assert E.round_filters(40, 1.4) == 56
  assert E.round_filters(112, 1.2) == 136


def test_tapped_forward_and_default_layer_on_a_small_input(init):
  module = E.tiny_efficientnet(num_classes=7)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  variables = init(module, x)
  clf = P.Classifier(module, variables, input_shape=(64, 64, 3), default_layer=E.DEFAULT_LAYER)
  assert {"head", "blocks_2", "blocks_1/depthwise", "stem", "fc"} <= set(clf.layer_names)
  tapped = jax.jit(clf.tapped)
  logits, acts = tapped(x)
  assert logits.shape == (2, 7)
  assert acts["head"].shape == (2, 4, 4, 32)
  np.testing.assert_allclose(logits, clf(x), rtol=1e-5, atol=1e-5)
  # The logits are the mean-pooled head through fc: a tap on `head` moves them linearly.
  t = jnp.ones((2, 4, 4, 32))
  moved, _ = tapped(x, {"head": t})
  w = variables["params"]["fc"]["kernel"]
  np.testing.assert_allclose(moved - logits, jnp.ones((2, 32)) @ w, rtol=1e-4, atol=1e-4)


def test_both_depthwise_formulations_give_the_same_model(init):
  module_x = E.tiny_efficientnet(num_classes=5, impl="xla")
  module_s = E.tiny_efficientnet(num_classes=5, impl="shifts")
  x = jax.random.normal(jax.random.key(0), (2, 15, 16, 3))
  variables = init(module_x, x)
  f = lambda m: jax.jit(lambda x: m.apply(variables, x)[:, 0].sum())
  np.testing.assert_allclose(f(module_x)(x), f(module_s)(x), rtol=1e-4, atol=1e-5)
  gx = jax.jit(jax.grad(f(module_x)))(x)
  gs = jax.jit(jax.grad(f(module_s)))(x)
  np.testing.assert_allclose(gx, gs, rtol=1e-4, atol=1e-5)


def test_bad_variant():
  with pytest.raises(ValueError, match="0..4"):
    E.efficientnet_lite(7)
