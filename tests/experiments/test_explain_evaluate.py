"""experiments.explain and experiments.evaluate on a tiny trained BlockMNIST MLP."""
import csv
import json
import os

import jax
import jax.numpy as jnp
from matplotlib import image as mpimg
import numpy as np
import pytest

import saljax
from saljax import plots
from experiments import _common as C
from experiments import evaluate, explain, train
from experiments.configs import blockmnist_standard


def tiny():
  c = blockmnist_standard.get_config()
  c.model.width = 16
  c.model.depth = 1
  c.train.steps = 10
  c.train.batch_size = 16
  c.train.eval_every = 10
  c.train.checkpoint_every = 10
  c.train.eval_examples = 16
  c.explain.methods = ("gradient", "smoothgrad", "integrated_gradients")
  c.explain.options["smoothgrad"] = {"samples": 3}
  c.explain.options["integrated_gradients"] = {"steps": 4}
  c.explain.num_examples = 10
  c.explain.chunk_size = 4
  c.explain.overlays = 1
  c.evaluate.metrics = ("deletion", "insertion", "relevance_mass", "sparseness")
  c.evaluate.options["deletion"] = {"steps": 4}
  c.evaluate.options["insertion"] = {"steps": 4}
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("trained"))
  train.run(tiny(), wd)
  return wd


@pytest.fixture(scope="module")
def explained(trained):
  manifest = explain.run(tiny(), trained)
  return trained, manifest


def test_explain_stores_chunks_and_manifest(explained):
  wd, manifest = explained
  assert manifest["num_chunks"] == 3 and manifest["num_examples"] == 10
  for m in ("inputs", "gradient", "smoothgrad", "integrated_gradients"):
    assert len(os.listdir(os.path.join(wd, "maps", m))) == 3
  inputs = explain.load_maps(os.path.join(wd, "maps"))
  assert inputs["image"].shape == (10, 56, 28, 1) and inputs["gt_mask"].shape == (10, 56, 28)
  np.testing.assert_array_equal(inputs["index"], np.arange(10))
  for m in ("gradient", "smoothgrad", "integrated_gradients"):
    assert explain.load_maps(os.path.join(wd, "maps"), m)["attribution"].shape == (10, 56, 28, 1)
  assert os.path.exists(os.path.join(wd, "overlays", "gradient_0.png"))
  assert json.load(open(os.path.join(wd, "maps", "manifest.json")))["model_step"] == 10


def test_stored_gradient_is_the_model_gradient(explained):
  # Chunking and padding change nothing: the stored map equals the gradient of
  # the target logit of the restored model, computed here in one go.
  wd, _ = explained
  inputs = explain.load_maps(os.path.join(wd, "maps"))
  t = C.load_trained(tiny(), wd, (56, 28, 1), 10)
  x, y = jnp.asarray(inputs["image"]), jnp.asarray(inputs["target"])
  g = jax.grad(lambda x: jnp.take_along_axis(t.f(x), y[:, None], 1).sum())(x)
  stored = explain.load_maps(os.path.join(wd, "maps"), "gradient")["attribution"]
  np.testing.assert_allclose(stored, g, rtol=1e-5, atol=1e-6)


def test_same_seed_same_maps_and_resume(explained, tmp_path):
  wd, _ = explained
  c = tiny()
  c.explain.train_workdir = wd
  c.explain.overlays = 0
  explain.run(c, str(tmp_path))
  for m in ("smoothgrad", "integrated_gradients"):
    np.testing.assert_array_equal(explain.load_maps(str(tmp_path / "maps"), m)["attribution"],
                                  explain.load_maps(os.path.join(wd, "maps"), m)["attribution"])
  # A missing chunk is recomputed; the others are left alone.
  p = tmp_path / "maps" / "smoothgrad" / "chunk_00001.npz"
  before = np.load(p)["attribution"]
  kept = tmp_path / "maps" / "gradient" / "chunk_00000.npz"
  mtime = os.stat(kept).st_mtime_ns
  os.remove(p)
  explain.run(c, str(tmp_path))
  np.testing.assert_array_equal(np.load(p)["attribution"], before)
  assert os.stat(kept).st_mtime_ns == mtime


def test_evaluate_writes_tables(explained):
  wd, _ = explained
  rows = evaluate.run(tiny(), wd)
  assert len(rows) == 12
  for (method, metric), r in rows.items():
    assert r["n"] == 10 and np.isfinite(r["mean"]), (method, metric, r)
    s = np.load(os.path.join(wd, "scores", f"{method}__{metric}.npy"))
    assert s.shape == (10,)
    np.testing.assert_allclose(r["mean"], s.mean())
    # The direction comes from the registry and follows the options.
    assert r["better"] == saljax.metrics.entry(metric).better(
        **(tiny().evaluate.options.get(metric, {}) or {})), (metric, r)
  assert rows[next(k for k in rows if k[1] == "deletion")]["better"] == "lower"
  with open(os.path.join(wd, "results.csv")) as fh:
    assert len(list(csv.DictReader(fh))) == 12
  md = open(os.path.join(wd, "results.md")).read()
  assert md.startswith("| method | metric |") and "relevance_mass" in md
  # Relevance mass is a share of positive relevance inside the signal block.
  rm = np.load(os.path.join(wd, "scores", "gradient__relevance_mass.npy"))
  assert ((rm >= 0) & (rm <= 1)).all()
  # The curves behind the AUCs: mean per step over the 10 examples, steps + 1 points.
  res = json.load(open(os.path.join(wd, "results.json")))
  assert len(res["rows"]) == 12 and set(res["curves"]) == {"deletion", "insertion"}
  for metric in ("deletion", "insertion"):
    got = res["curves"][metric]
    np.testing.assert_allclose(got["axis"]["x"], np.linspace(0, 1, 5))
    for method in ("gradient", "smoothgrad", "integrated_gradients"):
      c = got["methods"][method]
      assert len(c["mean"]) == 5 and c["n"] == 10
      # Its trapezoid area is the AUC the metric scored (RISE's uniform grid).
      np.testing.assert_allclose(np.trapezoid(c["mean"], dx=0.25), rows[(method, metric)]["mean"],
                                 rtol=1e-6)
  # Deletion ends with every feature removed: the same fill image for every method.
  ends = [got["methods"][m]["mean"][-1] for m in ("gradient", "smoothgrad")
          for got in [res["curves"]["deletion"]]]
  np.testing.assert_allclose(ends[0], ends[1], rtol=1e-6)
  colors = plots.method_colors(["gradient", "smoothgrad", "integrated_gradients"])
  for name in ("deletion.png", "insertion.png", "metrics_table.png"):
    img = mpimg.imread(os.path.join(wd, name))[..., :3]
    assert img.shape[0] > 200 and img.shape[1] > 300, (name, img.shape)
    assert img.std() > 0.05, name  # not blank
    if name != "metrics_table.png":
      for rgb in colors.values():  # one line per method, in its color
        assert (np.abs(img - rgb).max(-1) < 0.02).sum() > 30, (name, rgb)
  # The heat table has a best (green) and a worst (red) cell: three methods ranked.
  img = mpimg.imread(os.path.join(wd, "metrics_table.png"))[..., :3]
  for rgb in (plots.BEST_COLOR, plots.WORST_COLOR):
    assert (np.abs(img - rgb).max(-1) < 0.02).sum() > 500, rgb


def test_metric_without_its_data_gets_a_note(explained, tmp_path, monkeypatch):
  wd, _ = explained
  c = tiny()
  c.explain.train_workdir = wd
  c.evaluate.maps_dir = str(tmp_path / "maps")
  c.evaluate.metrics = ("relevance_mass",)
  c.explain.methods = ("gradient",)
  c.explain.overlays = 0
  # As if the data had no ground truth.
  monkeypatch.setattr(explain, "ground_truth_mask", lambda *a: None)
  explain.run(c, str(tmp_path))
  assert "gt_mask" not in explain.load_maps(str(tmp_path / "maps"))
  rows = evaluate.run(c, str(tmp_path))
  assert rows[("gradient", "relevance_mass")]["mean"] is None
  assert "mask" in rows[("gradient", "relevance_mass")]["note"]


def test_bad_inputs(trained, tmp_path):
  c = tiny()
  c.explain.methods = ("gradient", "gradcam_minus_minus")
  with pytest.raises(ValueError, match="gradcam_minus_minus"):
    explain.run(c, trained)
  c = tiny()
  c.evaluate.metrics = ("deletion_auc_typo",)
  with pytest.raises(ValueError, match="deletion_auc_typo"):
    evaluate.run(c, trained)
  with pytest.raises(FileNotFoundError, match="experiments.explain"):
    evaluate.run(tiny(), str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match="experiments.train"):
    explain.run(tiny(), str(tmp_path / "untrained"))
  assert not os.path.exists(tmp_path / "untrained" / "maps")


def test_layer_method_maps_are_upsampled_for_metrics(tmp_path):
  # A small CNN: Grad-CAM maps are stored at the layer's resolution [B, h, w]
  # and upsampled to the image by evaluate.
  c = tiny()
  c.model.name = "cnn"
  c.model.width = 4
  c.train.steps = 2
  c.train.eval_every = 2
  c.train.checkpoint_every = 2
  c.explain.methods = ("gradcam",)
  c.explain.num_examples = 4
  c.explain.overlays = 0
  c.evaluate.metrics = ("sparseness", "relevance_mass")
  train.run(c, str(tmp_path))
  manifest = explain.run(c, str(tmp_path))
  assert manifest["kinds"] == {"gradcam": "layer"}
  maps = explain.load_maps(str(tmp_path / "maps"), "gradcam")["attribution"]
  assert maps.ndim == 3 and maps.shape[0] == 4 and maps.shape[1:] != (56, 28)
  rows = evaluate.run(c, str(tmp_path))
  for r in rows.values():
    assert r["n"] == 4 and np.isfinite(r["mean"]), r


def test_voc_difficult_boxes_follow_the_config():
  import tensorflow_datasets as tfds
  c = tiny()
  c.data.name = "voc2007"
  c.data.image_size = (20, 20)
  with tfds.testing.mock_data(num_examples=6):
    kept = C.load_dataset(c, "test").batch(np.arange(6))
    c.data.keep_difficult = False
    dropped = C.load_dataset(c, "test").batch(np.arange(6))
  assert kept["box_difficult"].any() and not dropped["box_difficult"].any()
  assert (dropped["box_labels"] >= 0).sum() < (kept["box_labels"] >= 0).sum()
