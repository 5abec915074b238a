"""The zoo: parameter counts equal the published models, tapped forwards
expose the documented layers, and the default CAM layers work with Grad-CAM."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax import models as Z
from saljax.models.layers import count_params


@pytest.mark.parametrize("build,count", [
    (Z.resnet18, 11_689_512),      # torchvision resnet18
    (Z.resnet34, 21_797_672),      # torchvision resnet34
    (Z.resnet50, 25_557_032),      # torchvision resnet50
    (Z.vit_b16, 86_567_656),       # timm vit_base_patch16_224
    (Z.vit_tiny, 5_717_416),       # timm deit_tiny_patch16_224
    (Z.efficientnet_lite0, 4_652_008),  # efficientnet-lite-pytorch lite0
])
def test_parameter_counts_match_the_published_models(build, count):
  module = build()
  v = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  assert count_params(v["params"]) == count


def _check_tapped(clf, x, default_shape):
  logits, acts = jax.jit(clf.tapped)(x)
  np.testing.assert_allclose(logits, clf(x), rtol=1e-5, atol=1e-5)
  assert clf.default_layer in clf.layer_names
  assert acts[clf.default_layer].shape == default_shape
  return acts


def test_mlp(init):
  module = Z.mlp(num_classes=5, hidden=(16, 8))
  x = jax.random.normal(jax.random.key(0), (3, 4, 4, 3))
  clf = Z.wrap(module, init(module, x), input_shape=(4, 4, 3))
  acts = _check_tapped(clf, x, (3, 8))
  # hidden_0 is relu(x W + b): closed form from the parameters.
  p = clf.params["params"]["hidden_0"]["dense"]
  want = jax.nn.relu(x.reshape(3, -1) @ p["kernel"] + p["bias"])
  np.testing.assert_allclose(acts["hidden_0"], want, rtol=1e-5, atol=1e-5)


def test_cnn_and_gradcam_on_its_default_layer(init):
  module = Z.cnn(num_classes=4, features=(4, 8), hidden=8)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  clf = Z.wrap(module, init(module, x), input_shape=(16, 16, 3))
  _check_tapped(clf, x, (2, 8, 8, 8))
  cam = saljax.gradcam(clf.tapped, x, "predicted", layer=clf.default_layer)
  assert cam.shape == (2, 8, 8) and np.isfinite(cam).all()


def test_resnet(init):
  # ResNet-34/50 share this code path (their structure is checked by the counts above).
  module, shape, default_shape = Z.resnet18(num_classes=3, small_inputs=True, width=4), (16, 16, 3), (2, 2, 2, 32)
  x = jax.random.normal(jax.random.key(0), (2, *shape))
  clf = Z.wrap(module, init(module, x), input_shape=shape)
  acts = _check_tapped(clf, x, default_shape)
  assert "stem" in acts and "stage1_block0" in acts and "fc" in acts
  assert (np.asarray(acts[clf.default_layer]) >= 0).all()  # after the block's ReLU


def test_vit_exposes_tokens_and_attention_probabilities(init):
  module = Z.vit("vit_tiny", num_classes=3, patch=4, dim=16, depth=3, num_heads=2, mlp_dim=32)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  clf = Z.wrap(module, init(module, x), input_shape=(16, 16, 3))
  acts = _check_tapped(clf, x, (2, 17, 16))
  assert clf.default_layer == "blocks_1"  # the block before the last
  probs = acts["blocks_2/attn/probs"]
  assert probs.shape == (2, 2, 17, 17)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  # The head reads only the class token: a tap on the patch tokens after the
  # final norm leaves the logits unchanged.
  t = jnp.zeros((2, 17, 16)).at[:, 1:].set(1.0)
  moved, _ = jax.jit(clf.tapped)(x, {"norm": t})
  np.testing.assert_allclose(moved, clf(x), rtol=1e-5, atol=1e-5)


def test_vit_rejects_sizes_that_are_not_multiples_of_the_patch():
  module = Z.vit("vit_tiny", num_classes=3, patch=4, dim=8, depth=1, num_heads=2, mlp_dim=8)
  with pytest.raises(ValueError, match="multiple of the patch"):
    jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 10, 12, 3))))


def test_bad_vit_name():
  with pytest.raises(ValueError, match="vit_tiny"):
    Z.vit("vit_huge")
