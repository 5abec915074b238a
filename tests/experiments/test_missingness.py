"""experiments.missingness on tiny settings: a ViT and a CNN trained for a few
steps, flips and KL under random patch removal per strategy, written as JSON
lines, a markdown table and a figure."""
import json
import os

import numpy as np
import pytest

from experiments import missingness as MS
from experiments.configs import missingness as cfg


def tiny():
  c = cfg.get_config()
  c.data.n_train, c.data.n_test, c.data.size = 128, 8, 8
  c.vit.update(dict(patch=4, dim=16, depth=1, num_heads=2, mlp_dim=16))
  c.cnn.update(dict(features=(4, 8), hidden=8))
  c.train.steps = 30
  c.fractions = (0.25, 0.5)
  c.draws = 2
  return c


def test_writes_flips_and_kl_per_strategy(tmp_path):
  out = MS.run(tiny(), str(tmp_path))
  rows = [json.loads(l) for l in (tmp_path / "missingness.jsonl").read_text().splitlines()]
  assert rows == json.loads(json.dumps(out["rows"]))
  assert [(r["model"], r["removal"]) for r in rows[::2]] == [
      ("vit", "constant"), ("vit", "mean"), ("vit", "token_drop"),
      ("cnn", "constant"), ("cnn", "mean"), ("cnn", "layer_mask")]
  assert [r["fraction"] for r in rows[:2]] == [0.25, 0.5]
  assert [r["removed_cells"] for r in rows[:2]] == [1, 2] and rows[0]["cells"] == 4
  for r in rows:
    assert r["n"] == 16 and 0.0 <= r["flip_rate"] <= 1.0 and r["kl"] >= 0.0
    # A changed prediction can change the accuracy by at most the share that flipped.
    assert abs(r["accuracy"] - r["clean_accuracy"]) <= r["flip_rate"] + 1e-6
  assert set(out["done"]) == {"vit", "cnn"}
  assert all(isinstance(v, bool) for v in out["done"].values())
  table = (tmp_path / "missingness.md").read_text().splitlines()
  assert len(table) == 2 + len(rows) and "token_drop" in table[6]
  import matplotlib.image as mpimg
  img = mpimg.imread(tmp_path / "missingness.png")[..., :3]
  assert img.shape[0] > 400 and img.shape[1] > 600
  # The token-dropping (tab:blue) and layer-masking (tab:orange) lines are drawn.
  for rgb in ((0.122, 0.467, 0.706), (1.0, 0.498, 0.055)):
    assert (np.abs(img - np.asarray(rgb)).max(-1) < 0.03).sum() > 50, rgb
  assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_bad_config_refused_before_training(tmp_path):
  c = tiny()
  c.data.size = 10
  with pytest.raises(ValueError, match="data.size: expected a multiple of vit.patch = 4, got 10"):
    MS.run(c, str(tmp_path))
  c = tiny()
  c.fractions = (0.5, 1.0)
  with pytest.raises(ValueError, match=r"fractions: expected fractions in \(0, 1\)"):
    MS.run(c, str(tmp_path))


def test_photo_setting_rows_and_layer_mask(tmp_path, monkeypatch):
  # The pretrained-Lite0 setting's protocol on the bundled photos, with a tiny
  # random EfficientNet at 32 px standing in for Lite0 (the seam
  # load_photo_model; the real model runs in docs/masking.md's command).
  import jax
  from experiments.configs import missingness_lite0
  from saljax.models import efficientnet as E, pretrained as P
  module = E.tiny_efficientnet(num_classes=1000)
  variables = jax.jit(module.init)(jax.random.key(0, impl="rbg"), np.zeros((1, 32, 32, 3)))
  clf = P.Classifier(module, variables, input_shape=(32, 32, 3), default_layer=E.DEFAULT_LAYER,
                     layer_names=(E.DEFAULT_LAYER,), name="efficientnet_lite0",
                     preprocess=P._Preprocess(32, 32, P.LITE_MEAN, P.LITE_STD))
  monkeypatch.setattr(MS, "load_photo_model", lambda name: clf)
  c = missingness_lite0.get_config()
  c.photos, c.cell, c.fractions, c.draws = ("chelsea", "coffee"), 8, (0.25, 0.5), 2
  out = MS.run(c, str(tmp_path))
  rows = out["rows"]
  assert [(r["removal"], r["fraction"]) for r in rows[::2]] == [
      ("constant", 0.25), ("mean", 0.25), ("blur", 0.25), ("layer_mask", 0.25)]
  assert rows[0]["cells"] == 16 and [r["removed_cells"] for r in rows[:2]] == [4, 8]
  for r in rows:
    assert r["n"] == 4 and 0.0 <= r["flip_rate"] <= 1.0 and r["kl"] >= 0.0
  assert set(out["done"]) == {"efficientnet_lite0"}
  # The layer-mask row is what removed_logits gives on the same masks.
  from saljax.data import bundled_photos
  from saljax import removal as R
  import jax.numpy as jnp
  x = clf.preprocess([bundled_photos.photos(c.photos)[n] for n in c.photos])
  cells = MS.cell_masks(jax.random.key(1), c.fractions, 2, 2, (4, 4))
  keep = jnp.repeat(jnp.repeat(cells, 8, -2), 8, -1)
  y = np.asarray([bundled_photos.boxes(c.photos, image_size=32)[n]["class"] for n in c.photos])
  want = MS.measure(clf, x, y, keep[1], R.Removal("layer_mask"), 32)
  assert rows[7]["kl"] == round(want["kl"], 5)
  assert rows[7]["flip_rate"] == round(want["flip_rate"], 5)
  table = (tmp_path / "missingness.md").read_text().splitlines()
  assert len(table) == 2 + len(rows) and "layer_mask" in table[-1]
  c.cell = 5
  with pytest.raises(ValueError, match="cell: expected a positive divisor of the model's input"
                                       " size 32, got 5"):
    MS.run(c, str(tmp_path))
