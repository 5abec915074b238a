"""experiments.sanity and experiments.roar on a tiny trained BlockMNIST MLP."""
import csv
import json
import os

import numpy as np
import pytest
from matplotlib import image as mpimg

from experiments import _common as C
from experiments import roar, sanity, train
from experiments.configs import blockmnist_standard
from saljax import plots


def tiny():
  c = blockmnist_standard.get_config()
  c.model.width = 16
  c.model.depth = 1
  c.train.steps = 30
  c.train.batch_size = 16
  c.train.eval_every = 30
  c.train.checkpoint_every = 30
  c.train.eval_examples = 16
  c.sanity.methods = ("gradient_x_input",)
  c.sanity.num_examples = 6
  c.sanity.similarities = ("spearman_abs", "spearman")
  c.roar.fractions = (0.5,)
  c.roar.retrain_steps = 5
  c.roar.seeds = (0,)
  c.roar.attribution_batch = 512
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("trained"))
  train.run(tiny(), wd)
  return wd


def test_sanity_curves_and_figures(trained):
  out = sanity.run(tiny(), trained)
  assert out["layers"] == ("out", "hidden_0")  # output first
  for m in ("gradient_x_input",):
    for sim in ("spearman_abs", "spearman"):
      curve = np.asarray(out["curves"][m][sim])
      assert curve.shape == (2,) and (np.abs(curve) <= 1 + 1e-5).all()
    assert os.path.exists(os.path.join(trained, f"sanity_{m}.png"))
  # Adebayo et al. Sec. 5: gradient x input keeps the input's structure, so its
  # absolute rank correlation stays above the signed one once layers are random.
  gxi = out["curves"]["gradient_x_input"]
  assert gxi["spearman_abs"][-1] > gxi["spearman"][-1]
  # Randomizing every layer flips the signs: the signed rank correlation collapses.
  assert gxi["spearman"][-1] < 0.5
  with open(os.path.join(trained, "sanity.csv")) as fh:
    assert len(list(csv.DictReader(fh))) == 1 * 2 * 2
  got = json.load(open(os.path.join(trained, "sanity.json")))
  assert got["mode"] == "cascading"
  sem = np.asarray(got["sem"]["gradient_x_input"]["spearman"])
  assert sem.shape == (2,) and (sem >= 0).all() and (sem < 0.5).all()
  # All methods in one figure, one panel per similarity, each method in its color.
  img = mpimg.imread(os.path.join(trained, "sanity_curves.png"))[..., :3]
  assert img.shape[1] > 1.5 * img.shape[0] and img.std() > 0.05
  rgb = plots.method_colors(["gradient_x_input"])["gradient_x_input"]
  hits = np.abs(img - rgb).max(-1) < 0.02
  assert hits.sum() > 100
  # Two panels: the line's pixels lie in both halves of the figure.
  cols = np.nonzero(hits.any(0))[0]
  assert cols.min() < img.shape[1] * 0.4 and cols.max() > img.shape[1] * 0.5


def test_sanity_bad_inputs(trained):
  c = tiny()
  c.sanity.mode = "sideways"
  with pytest.raises(ValueError, match="sanity.mode"):
    sanity.run(c, trained)
  c = tiny()
  c.sanity.methods = ("gradcam",)
  with pytest.raises(ValueError, match="layer methods"):
    sanity.run(c, trained)
  c = tiny()
  c.sanity.similarities = ("kendall",)
  with pytest.raises(ValueError, match="sanity.similarities"):
    sanity.run(c, trained)


def test_permuted_labels_keep_the_marginals_and_break_the_pairing():
  c = tiny()
  ds = C.load_dataset(c, "train")
  labels = ds.labels()
  perm = train.permuted_labels(ds, 0)
  np.testing.assert_array_equal(np.sort(perm), np.sort(labels))
  assert (perm == labels).mean() < 0.25  # 10 balanced classes: about 0.1 by chance
  np.testing.assert_array_equal(perm, train.permuted_labels(ds, 0))
  assert not np.array_equal(perm, train.permuted_labels(ds, 1))


@pytest.fixture(scope="module")
def random_labels(tmp_path_factory):
  c = tiny()
  c.train.permute_labels = True
  wd = str(tmp_path_factory.mktemp("random_labels"))
  train.run(c, wd)
  return wd


def data_config(random_wd):
  c = tiny()
  c.sanity.test = "data"
  c.sanity.methods = ("gradient", "gradient_x_input")
  c.sanity.random_labels_workdir = random_wd
  return c


def test_data_randomization_files_and_scores(trained, random_labels):
  lines = [json.loads(l) for l in open(os.path.join(random_labels, "metrics.jsonl"))]
  assert any("permuted_train_accuracy" in l for l in lines)
  out = sanity.run(data_config(random_labels), trained)
  for m in ("gradient", "gradient_x_input"):
    for sim in ("spearman_abs", "spearman"):
      assert -1 <= out["scores"][m][sim] <= 1
  # Another model (permuted labels), other maps; the model against itself: identical.
  assert out["scores"]["gradient"]["spearman_abs"] < 0.95
  c = data_config(trained)
  c.explain.target = "predicted"  # the random model always explains its own prediction
  same = sanity.run(c, trained)
  for m in ("gradient", "gradient_x_input"):
    assert same["scores"][m]["spearman_abs"] == pytest.approx(1.0, abs=1e-5)
  with open(os.path.join(trained, "sanity_data.csv")) as fh:
    assert len(list(csv.DictReader(fh))) == 2 * 2
  assert os.path.exists(os.path.join(trained, "sanity_data_maps.png"))
  assert json.load(open(os.path.join(trained, "sanity_data.json")))["test"] == "data"


def test_data_randomization_bad_inputs(trained, tmp_path):
  c = data_config(None)
  with pytest.raises(ValueError, match="sanity.random_labels_workdir"):
    sanity.run(c, trained)
  c = data_config(str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="sanity.random_labels_workdir"):
    sanity.run(c, trained)
  c = data_config(str(tmp_path))  # a directory without checkpoints
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    sanity.run(c, trained)
  c = data_config(str(tmp_path))
  c.sanity.test = "labels"
  with pytest.raises(ValueError, match="sanity.test"):
    sanity.run(c, trained)


def test_masked_dataset_keeps_top_or_bottom_coordinates():
  from saljax.data import pipelines
  img = np.arange(1, 9, dtype=np.float32).reshape(1, 2, 2, 2)
  ds = pipelines.ArrayDataset("t", "test", {"image": img, "label": np.zeros(1, np.int32)},
                              num_classes=2)
  scores = np.array([0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4], np.float32).reshape(1, 2, 2, 2)
  top = roar.masked_dataset(ds, scores, 0.5, True, -1.0).batch([0])["image"].reshape(-1)
  bottom = roar.masked_dataset(ds, scores, 0.5, False, -1.0).batch([0])["image"].reshape(-1)
  # Per coordinate (channels included): the 4 largest scores are at 1, 2, 4, 6.
  np.testing.assert_array_equal(top, [-1, 2, 3, -1, 5, -1, 7, -1])
  np.testing.assert_array_equal(bottom, [1, -1, -1, 4, -1, 6, -1, 8])


def test_roar_rows_and_files(trained):
  out = roar.run(tiny(), trained)
  assert len(out["rows"]) == 1
  r = out["rows"][0]
  assert r["k"] == 0.5 and 0 <= r["acc_top"] <= 1 and 0 <= r["acc_bottom"] <= 1
  assert r["diffroar"] == pytest.approx(r["acc_top"] - r["acc_bottom"])
  for f in ("roar.csv", "roar.json", "roar.png"):
    assert os.path.exists(os.path.join(trained, f))


def test_roar_bad_inputs(trained):
  c = tiny()
  c.roar.fractions = (0.0, 0.5)
  with pytest.raises(ValueError, match="roar.fractions"):
    roar.run(c, trained)
  c = tiny()
  c.roar.method = "gradient_typo"
  with pytest.raises(ValueError, match="gradient_typo"):
    roar.run(c, trained)
