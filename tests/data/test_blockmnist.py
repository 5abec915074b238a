"""BlockMNIST: layout, ground truth, determinism, label independence of the null block."""
import numpy as np
import jax.numpy as jnp
import pytest

from saljax.data import blockmnist


def test_layout_and_ground_truth():
  d = blockmnist.load("train", seed=0)
  n = len(d["label"])
  assert d["image"].shape == (n, 56, 28, 1) and d["image"].dtype == np.float32
  assert n == 1438 and len(blockmnist.load("test")["label"]) == 359
  assert 0.0 <= d["image"].min() and d["image"].max() <= 1.0
  null = blockmnist.null_block(28)
  img = d["image"][..., 0]
  top = d["signal_top"]
  # The null block is the fixed pattern exactly, wherever the mask says it is.
  np.testing.assert_array_equal(img[top, 28:], np.broadcast_to(null, (top.sum(), 28, 28)))
  np.testing.assert_array_equal(img[~top, :28], np.broadcast_to(null, ((~top).sum(), 28, 28)))
  np.testing.assert_array_equal(d["signal_mask"][:, :28, 0], top[:, None].repeat(28, 1))
  np.testing.assert_array_equal(d["signal_mask"][:, 28:, 0], ~top[:, None].repeat(28, 1))
  # Both placements occur, about half each.
  assert 0.4 < top.mean() < 0.6
  assert set(np.unique(d["label"])) == set(range(10))


def test_signal_block_decides_the_label():
  d = blockmnist.load("train")
  sig = np.where(d["signal_top"][:, None, None], d["image"][:, :28, :, 0], d["image"][:, 28:, :, 0])
  # Nearest class mean on the signal block alone classifies well; on the null block it cannot.
  means = np.stack([sig[d["label"] == c].mean(0) for c in range(10)])
  pred = np.argmin(((sig[:, None] - means[None]) ** 2).sum((2, 3)), 1)
  assert (pred == d["label"]).mean() > 0.8
  nul = np.where(d["signal_top"][:, None, None], d["image"][:, 28:, :, 0], d["image"][:, :28, :, 0])
  assert np.ptp(nul, axis=0).max() == 0.0


def test_deterministic_and_top_variant():
  a, b = blockmnist.load("test", seed=3), blockmnist.load("test", seed=3)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  c = blockmnist.load("test", seed=4)
  assert not np.array_equal(a["signal_top"], c["signal_top"])
  np.testing.assert_array_equal(a["label"], c["label"])  # the split does not depend on seed
  t = blockmnist.load("test", placement="top")
  assert t["signal_top"].all()


def test_classes_subset_and_size():
  d = blockmnist.load("train", classes=(3, 7), size=16)
  assert d["image"].shape[1:] == (32, 16, 1)
  assert set(np.unique(d["label"])) == {0, 1}


def test_null_block_share():
  mask = np.zeros((2, 4, 2), bool)
  mask[:, :2] = True  # signal on top
  attr = np.zeros((2, 4, 2, 1), np.float32)
  attr[0, :2] = 1.0   # all mass on the signal
  attr[1, 2:] = -1.0  # all mass on the null block (absolute value counts)
  share = blockmnist.null_block_share(attr, mask, fraction=0.5)
  np.testing.assert_allclose(share, [0.0, 1.0])
  share = blockmnist.null_block_share(jnp.asarray(attr[..., 0]), mask, fraction=0.25, absolute=False)
  # Signed ranking: in row 1 the negative null mass ranks below the zeros of the signal block.
  np.testing.assert_allclose(share, [0.0, 0.0])


def test_bad_inputs():
  with pytest.raises(ValueError, match="split"):
    blockmnist.load("validation")
  with pytest.raises(ValueError, match="placement"):
    blockmnist.load(placement="left")
  with pytest.raises(ValueError, match="classes"):
    blockmnist.load(classes=(1,))
  with pytest.raises(ValueError, match="signal_mask"):
    blockmnist.null_block_share(np.zeros((2, 4, 2)), np.zeros((2, 4, 3), bool))
  with pytest.raises(ValueError, match="fraction"):
    blockmnist.null_block_share(np.zeros((2, 4, 2)), np.zeros((2, 4, 2), bool), fraction=0.0)
