"""MAE pre-training (saljax.models.mae, experiments.pretrain_mae): patch order,
masks, the loss on masked patches only, a resumed run equal to an
uninterrupted one, and the exported ViT train run that Prompt-CAM loads as its
frozen backbone (docs/prompt_cam.md)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import _common as C
from experiments import pretrain_mae, train
from experiments.configs import prompt_cam_blockmnist
from saljax.models import mae as mae_lib


def test_patchify_order_and_masks():
  x = jnp.arange(2 * 4 * 6 * 1, dtype=jnp.float32).reshape(2, 4, 6, 1)
  p = np.asarray(mae_lib.patchify(x, 2))
  assert p.shape == (2, 6, 4)
  # Patch 4 (row 1, column 1) of image 0: pixels (2..3, 2..3), row-major.
  np.testing.assert_array_equal(p[0, 4], [14, 15, 20, 21])
  vis, masked = mae_lib.random_visible(jax.random.key(0), 3, 32, 0.75)
  assert vis.shape == (3, 8)
  m = np.asarray(masked)
  assert (m.sum(1) == 24).all()
  assert not m[np.arange(3)[:, None], np.asarray(vis)].any()
  again, _ = mae_lib.random_visible(jax.random.key(0), 3, 32, 0.75)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(vis))  # deterministic under the key
  assert len({tuple(r) for r in np.asarray(vis).tolist()}) == 3      # a set per example
  with pytest.raises(ValueError, match=r"mask_ratio: expected a share in \[0, 1\)"):
    mae_lib.random_visible(jax.random.key(0), 1, 4, 1.0)


def _config(steps):
  c = prompt_cam_blockmnist.get_config("mae")
  c.data.image_size = (24, 12)
  c.model.patch_size, c.model.width, c.model.depth, c.model.num_heads = 4, 16, 1, 2
  c.train.steps, c.train.batch_size, c.train.warmup_steps = steps, 16, 1
  c.train.checkpoint_every, c.train.log_every, c.train.progress_every_s = 2, 2, 0.0
  return c


def test_resume_equals_uninterrupted_and_export_loads(tmp_path):
  whole = pretrain_mae.run(_config(3), str(tmp_path / "a"))
  pretrain_mae.run(_config(2), str(tmp_path / "b"))        # checkpoint at step 2
  resumed = pretrain_mae.run(_config(3), str(tmp_path / "b"))
  for u, v in zip(jax.tree_util.tree_leaves(whole["params"]),
                  jax.tree_util.tree_leaves(resumed["params"])):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
  # Masked-patch MSE after 3 steps: finite and positive.
  assert 0.0 < whole["metrics"]["eval_mae_mse"] < 1.0
  # The exported run is a ViT train run whose encoder is MAE's.
  pcfg = prompt_cam_blockmnist.get_config("prompts")
  pcfg.model.backbone_workdir = str(tmp_path / "a")
  with open(tmp_path / "a" / "config.train.json") as fh:
    assert json.load(fh)["model"]["name"] == "vit_tiny"
  vit = train.load_backbone(pcfg, (24, 12, 1), 10)
  assert vit.step == 3
  got = jax.device_get(vit.variables["params"])
  enc = mae_lib.encoder_params(whole["params"])
  assert sorted(got) == sorted([*enc, "head"])
  for k in enc:
    for u, v in zip(jax.tree_util.tree_leaves(enc[k]), jax.tree_util.tree_leaves(got[k])):
      np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_bad_config_refused_before_work(tmp_path):
  c = _config(1)
  c.train.mask_ratio = 1.0
  with pytest.raises(ValueError, match=r"train.mask_ratio: expected a share in \(0, 1\), got 1.0"):
    pretrain_mae.run(c, str(tmp_path / "a"))
  c = _config(1)
  c.model.name = "cnn"
  with pytest.raises(ValueError, match=r"model.name: expected a ViT to pre-train"):
    pretrain_mae.run(c, str(tmp_path / "b"))
  assert not os.path.exists(tmp_path / "b")
