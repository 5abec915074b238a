"""tfds pipelines on tfds.testing.mock_data (random access, no TensorFlow), and the step-indexed order."""
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from saljax.data import pipelines


@pytest.fixture
def mock():
  with tfds.testing.mock_data(num_examples=6):
    yield


def test_no_tensorflow_needed(mock):
  pipelines.load("mnist", "train").batch([0, 1])
  assert "tensorflow" not in sys.modules


@pytest.mark.parametrize("name,channels,num_classes", [
    ("mnist", 1, 10), ("cifar10", 3, 10), ("imagenet2012", 3, 1000), ("celeb_a", 3, 2)])
def test_classification_sets(mock, name, channels, num_classes):
  ds = pipelines.load(name, "test", image_size=(16, 12), mean=0.5, std=0.25)
  assert len(ds) == 6 and ds.num_classes == num_classes
  b = ds.batch([0, 3, 5])
  assert b["image"].shape == (3, 16, 12, channels) and b["image"].dtype == np.float32
  # [0, 1] pixels normalized with mean 0.5 and std 0.25 lie in [-2, 2].
  assert b["image"].min() >= -2 - 1e-6 and b["image"].max() <= 2 + 1e-6
  assert b["label"].dtype == np.int32 and ((0 <= b["label"]) & (b["label"] < num_classes)).all()


def test_voc_boxes(mock):
  ds = pipelines.load("voc2007", "test", image_size=(20, 20), max_boxes=4)
  b = ds.batch(np.arange(6))
  assert b["boxes"].shape == (6, 4, 4) and b["box_labels"].shape == (6, 4)
  assert b["labels"].shape == (6, 20)
  for i in range(6):
    valid = b["box_labels"][i] >= 0
    assert set(b["box_labels"][i][valid]) == set(np.flatnonzero(b["labels"][i]))
    assert (b["boxes"][i][~valid] == 0).all()
    if valid.any():
      assert b["label"][i] == b["box_labels"][i][0]


def test_voc_difficult_boxes_flagged_or_dropped(mock):
  keep = pipelines.load("voc2007", "test", image_size=(20, 20), max_boxes=16)
  drop = pipelines.load("voc2007", "test", image_size=(20, 20), max_boxes=16,
                        keep_difficult=False)
  bk, bd = keep.batch(np.arange(6)), drop.batch(np.arange(6))
  flagged = 0
  for i in range(6):
    obj = keep._source[i]["objects"]
    # mock_data draws each sequence's length on its own: objects are the common prefix.
    k = min(len(obj["bbox"]), len(obj["label"]), len(obj["is_difficult"]))
    diff = np.asarray(obj["is_difficult"], bool)[:k]
    boxes = np.asarray(obj["bbox"], np.float32).reshape(-1, 4)[:k]
    valid_k, valid_d = bk["box_labels"][i] >= 0, bd["box_labels"][i] >= 0
    np.testing.assert_array_equal(bk["boxes"][i][valid_k], boxes[:16])
    np.testing.assert_array_equal(bk["box_difficult"][i][valid_k], diff[:16])
    # Dropping keeps exactly the boxes not flagged, in order.
    np.testing.assert_array_equal(bd["boxes"][i][valid_d], boxes[~diff][:16])
    assert not bd["box_difficult"][i].any()
    flagged += int(diff.sum())
  assert flagged > 0  # the mock data has some difficult objects, or this test shows nothing
  with pytest.raises(TypeError, match="keep_difficult"):
    pipelines.load("voc2007", "test", image_size=(20, 20), keep_difficult="no")


def test_birds_box_and_mask(mock):
  b = pipelines.load("caltech_birds2011", "train", image_size=(24, 24)).batch([0, 1])
  assert b["boxes"].shape == (2, 1, 4) and b["segmentation_mask"].shape == (2, 24, 24)
  np.testing.assert_array_equal(b["box_labels"][:, 0], b["label"])


def test_missing_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(pipelines.DatasetNotFoundError, match="tfds build cifar10"):
    pipelines.load("cifar10", "train", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="manual_dir"):
    pipelines.load("imagenet2012", "test", data_dir=str(tmp_path))


def test_variable_size_sets_need_an_image_size(mock):
  with pytest.raises(ValueError, match="image_size"):
    pipelines.load("voc2007", "test")


def test_unknown_dataset():
  with pytest.raises(ValueError, match="dataset"):
    pipelines.load("svhn_cropped", "train")


def test_indices_for_step_are_epoch_permutations():
  n, bs = 10, 4
  order = np.concatenate([pipelines.indices_for_step(s, bs, n, seed=1) for s in range(5)])
  np.testing.assert_array_equal(np.sort(order[:10]), np.arange(10))  # epoch 0 is a permutation
  np.testing.assert_array_equal(np.sort(order[10:20]), np.arange(10))  # so is epoch 1
  np.testing.assert_array_equal(pipelines.indices_for_step(3, bs, n, seed=1), order[12:16])
  assert not np.array_equal(order[:10], order[10:20])
  np.testing.assert_array_equal(pipelines.indices_for_step(1, 4, 10, shuffle=False), [4, 5, 6, 7])


def test_blockmnist_dataset():
  ds = pipelines.load("blockmnist", "test", seed=2)
  b = ds.batch_for_step(0, 8, seed=0)
  assert b["image"].shape == (8, 56, 28, 1) and b["signal_mask"].shape == (8, 56, 28)
  assert ds.num_classes == 10 and ds.image_shape == (56, 28, 1)
  top = pipelines.load("blockmnist_top", "test").batch(np.arange(5))
  assert top["signal_top"].all()
