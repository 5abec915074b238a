"""Input pipelines over tfds, read with `tfds.data_source` (random access over
ArrayRecord files, no TensorFlow needed) and batched with numpy.

Every dataset, tfds or in-memory (BlockMNIST), is a `Dataset`: ``len(ds)`` and
``ds.batch(indices) -> dict of numpy arrays`` with

- ``"image"``: float32 ``[B, H, W, C]``, in [0, 1] then normalized with the
  dataset's `mean`/`std` when given;
- ``"label"``: int32 ``[B]`` (the class to explain);
- where the dataset has them: ``"boxes"`` float32 ``[B, K, 4]`` as normalized
  ``(ymin, xmin, ymax, xmax)`` padded with zeros, ``"box_labels"`` int32
  ``[B, K]`` padded with -1, ``"labels"`` multi-hot ``[B, C]`` (VOC),
  ``"segmentation_mask"`` ``[B, H, W]`` (birds), ``"signal_mask"`` (BlockMNIST).

The order of examples is a pure function of ``(seed, step)``
(`indices_for_step`): a training run restarted from a checkpoint at step `s`
sees exactly the batches it would have seen without the interruption.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from saljax import _validation as V


class DatasetNotFoundError(FileNotFoundError):
  """A dataset that is not prepared on this machine (the message says how to prepare it)."""


@dataclasses.dataclass(frozen=True)
class Spec:
  tfds_name: str
  num_classes: int
  channels: int = 3
  label_key: str | None = "label"
  manual: str | None = None  # files the user must download by hand (tfds manual_dir)
  boxes: str | None = None   # None, "objects" (VOC) or "bbox" (birds)


SPECS: dict[str, Spec] = {
    "mnist": Spec("mnist", 10, channels=1),
    "cifar10": Spec("cifar10", 10),
    "imagenet2012": Spec(
        "imagenet2012", 1000,
        manual="ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org"),
    "voc2007": Spec("voc/2007", 20, label_key=None, boxes="objects"),
    "caltech_birds2011": Spec("caltech_birds2011", 200, boxes="bbox"),
    "celeb_a": Spec("celeb_a", 2, label_key=None),
}

# Splits that tfds names differently from "train"/"test".
_SPLIT_ALIASES = {("imagenet2012", "test"): "validation"}


def prepare_instructions(name: str, data_dir: str | None = None) -> str:
  """How to prepare `name` with tfds for random access (ArrayRecord)."""
  spec = SPECS[name]
  dd = f" --data_dir={data_dir}" if data_dir else ""
  cmd = f"tfds build {spec.tfds_name} --file_format=array_record{dd}"
  if spec.manual:
    return (f"download {spec.manual} into a manual_dir (default"
            f" ~/tensorflow_datasets/downloads/manual), then run `{cmd} --manual_dir=DIR`")
  return f"run `{cmd}` once on a machine with internet access, then copy the data_dir here"


def open_source(name: str, split: str, data_dir: str | None = None):
  """The tfds random-access source of `name`/`split`, or a clear error.

  Raises:
    ValueError: `name` is not a known dataset.
    DatasetNotFoundError: the dataset is not prepared in `data_dir`; the
      message names the dataset and the `tfds build` command that prepares it.
  """
  import tensorflow_datasets as tfds

  V.check_choice(name, "dataset", SPECS)
  spec = SPECS[name]
  tfds_split = _SPLIT_ALIASES.get((name, split), split)
  try:
    return tfds.data_source(spec.tfds_name, split=tfds_split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises several types for "not there"
    where = data_dir or "the default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    raise DatasetNotFoundError(
        f"dataset {name!r} (tfds {spec.tfds_name!r}, split {tfds_split!r}) could not be"
        f" opened from {where}: {type(e).__name__}: {str(e)[:300]}. To prepare it: "
        + prepare_instructions(name, data_dir)) from e


def indices_for_step(step: int, batch_size: int, n: int, *, seed: int = 0,
                     shuffle: bool = True) -> np.ndarray:
  """Example indices of batch `step`: position ``p = step*batch_size + i`` is
  example ``perm_{epoch}[p % n]`` with ``epoch = p // n`` and one permutation
  per ``(seed, epoch)``. Stateless, so a restart at any step resumes the order."""
  pos = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
  epoch, within = pos // n, pos % n
  if not shuffle:
    return within
  out = np.empty_like(pos)
  for e in np.unique(epoch):  # at most two epochs meet in one batch
    perm = np.random.default_rng([int(seed), int(e)]).permutation(n)
    sel = epoch == e
    out[sel] = perm[within[sel]]
  return out


def _resize(img: np.ndarray, size: tuple[int, int], *, crop: bool, nearest: bool = False) -> np.ndarray:
  """Resizes an HWC uint8 image with PIL: shorter side then centre crop (`crop`),
  or straight to `size` (keeps normalized box coordinates valid)."""
  from PIL import Image

  h, w = img.shape[:2]
  if (h, w) == tuple(size):
    return img
  squeeze = img.ndim == 3 and img.shape[2] == 1
  pil = Image.fromarray(img[..., 0] if squeeze else img)
  method = Image.NEAREST if nearest else Image.BILINEAR
  if crop:
    scale = max(size[0] / h, size[1] / w)
    nh, nw = max(size[0], round(h * scale)), max(size[1], round(w * scale))
    pil = pil.resize((nw, nh), method)
    top, left = (nh - size[0]) // 2, (nw - size[1]) // 2
    pil = pil.crop((left, top, left + size[1], top + size[0]))
  else:
    pil = pil.resize((size[1], size[0]), method)
  out = np.asarray(pil)
  return out[..., None] if squeeze or out.ndim == 2 else out


class Dataset:
  """Random access to a split: ``len(ds)``, ``ds.batch(indices)``.

  Attributes:
    name, split, num_classes, image_shape (``(H, W, C)`` after preprocessing).
  """

  def __init__(self, name: str, split: str, source, *, num_classes: int,
               image_shape: tuple[int, int, int], mean=None, std=None):
    self.name, self.split, self.num_classes = name, split, num_classes
    self.image_shape = tuple(image_shape)
    self._source = source
    self.mean = None if mean is None else np.asarray(mean, np.float32)
    self.std = None if std is None else np.asarray(std, np.float32)

  def __len__(self) -> int:
    return len(self._source)

  def _normalize(self, image: np.ndarray) -> np.ndarray:
    if self.mean is not None:
      image = image - self.mean
    if self.std is not None:
      image = image / self.std
    return image

  def batch(self, indices) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def labels(self, chunk: int = 1024) -> np.ndarray:
    """Every example's ``"label"``, in order: one pass over the split in
    batches of `chunk` (what label-permutation training needs up front)."""
    n = len(self)
    out = [self.batch(np.arange(i, min(i + chunk, n)))["label"] for i in range(0, n, chunk)]
    return np.concatenate(out) if out else np.zeros((0,), np.int32)

  def batch_for_step(self, step: int, batch_size: int, *, seed: int = 0,
                     shuffle: bool = True) -> dict[str, np.ndarray]:
    """The batch a training loop sees at `step` (see `indices_for_step`)."""
    return self.batch(indices_for_step(step, batch_size, len(self), seed=seed, shuffle=shuffle))


class ArrayDataset(Dataset):
  """A `Dataset` over in-memory arrays (``"image"`` float in [0, 1], ``"label"``, ...)."""

  def __init__(self, name: str, split: str, arrays: Mapping[str, np.ndarray], *,
               num_classes: int, mean=None, std=None):
    self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
    super().__init__(name, split, self.arrays["label"], num_classes=num_classes,
                     image_shape=self.arrays["image"].shape[1:], mean=mean, std=std)

  def labels(self, chunk: int = 1024) -> np.ndarray:
    return self.arrays["label"].copy()

  def batch(self, indices) -> dict[str, np.ndarray]:
    idx = np.asarray(indices)
    out = {k: v[idx] for k, v in self.arrays.items()}
    out["image"] = self._normalize(out["image"].astype(np.float32))
    return out


class TfdsDataset(Dataset):
  """A `Dataset` over a `tfds.data_source`, decoded and resized with numpy/PIL."""

  def __init__(self, name: str, split: str, *, data_dir: str | None = None,
               image_size: tuple[int, int] | None = None, mean=None, std=None,
               max_boxes: int = 16, attribute: str = "Smiling", keep_difficult: bool = True):
    spec = SPECS.get(name)
    if not isinstance(keep_difficult, bool):
      raise TypeError(f"keep_difficult: expected True or False, got {keep_difficult!r}")
    self.keep_difficult = keep_difficult
    source = open_source(name, split, data_dir)
    if image_size is None and name in ("imagenet2012", "voc2007", "caltech_birds2011"):
      raise ValueError(f"image_size: {name!r} has images of many sizes; pass (H, W) to batch them")
    if image_size is None:
      first = np.asarray(source[0]["image"])
      image_size = first.shape[:2]
    self.spec, self.max_boxes, self.attribute = spec, int(max_boxes), attribute
    self.image_size = tuple(int(s) for s in image_size)
    super().__init__(name, split, source, num_classes=spec.num_classes,
                     image_shape=(*self.image_size, spec.channels), mean=mean, std=std)

  def _example(self, ex: dict[str, Any]) -> dict[str, np.ndarray]:
    spec = self.spec
    img = np.asarray(ex["image"])
    if img.ndim == 2:
      img = img[..., None]
    # Box datasets are resized without cropping so normalized boxes stay valid.
    out: dict[str, np.ndarray] = {
        "image": _resize(img, self.image_size, crop=spec.boxes is None).astype(np.float32) / 255.0}
    if spec.label_key is not None:
      out["label"] = np.int32(ex[spec.label_key])
    if self.name == "celeb_a":
      attrs = ex["attributes"]
      if self.attribute not in attrs:
        raise ValueError(f"attribute: expected one of {sorted(attrs)}, got {self.attribute!r}")
      out["label"] = np.int32(bool(attrs[self.attribute]))
    if spec.boxes == "objects":
      obj = ex["objects"]
      boxes = np.asarray(obj["bbox"], np.float32).reshape(-1, 4)
      labels = np.asarray(obj["label"], np.int64).reshape(-1)
      difficult = np.asarray(obj.get("is_difficult", np.zeros(len(labels))), bool).reshape(-1)
      k = min(len(boxes), len(labels), len(difficult))
      boxes, labels, difficult = boxes[:k], labels[:k], difficult[:k]
      ok = (labels >= 0) & (labels < spec.num_classes)
      if not self.keep_difficult:  # as VOC's own evaluation, which ignores them
        ok &= ~difficult
      boxes, labels = boxes[ok][: self.max_boxes], labels[ok][: self.max_boxes]
      difficult = difficult[ok][: self.max_boxes]
      out["boxes"] = np.zeros((self.max_boxes, 4), np.float32)
      out["boxes"][: len(boxes)] = boxes
      out["box_labels"] = np.full((self.max_boxes,), -1, np.int32)
      out["box_labels"][: len(labels)] = labels
      out["box_difficult"] = np.zeros((self.max_boxes,), bool)
      out["box_difficult"][: len(difficult)] = difficult
      out["labels"] = np.zeros((spec.num_classes,), np.int32)
      out["labels"][labels] = 1
      out["label"] = np.int32(labels[0] if len(labels) else 0)
    elif spec.boxes == "bbox":
      out["boxes"] = np.zeros((1, 4), np.float32)
      out["boxes"][0] = np.asarray(ex["bbox"], np.float32).reshape(4)
      out["box_labels"] = np.asarray([out["label"]], np.int32)
      if "segmentation_mask" in ex:
        m = np.asarray(ex["segmentation_mask"])
        m = m[..., None] if m.ndim == 2 else m
        out["segmentation_mask"] = _resize(m, self.image_size, crop=False, nearest=True)[..., 0] > 0
    return out

  def batch(self, indices) -> dict[str, np.ndarray]:
    examples = [self._example(self._source[int(i)]) for i in np.asarray(indices)]
    out = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    out["image"] = self._normalize(out["image"])
    return out


def load(name: str, split: str = "train", *, data_dir: str | None = None,
         image_size=None, mean=None, std=None, seed: int = 0, **kwargs) -> Dataset:
  """A `Dataset` by name: one of `SPECS` (tfds) or ``"blockmnist"`` /
  ``"blockmnist_top"`` (built in memory from scikit-learn digits).

  Args:
    name: dataset name.
    split: ``"train"`` or ``"test"`` (or any tfds split string for tfds sets;
      ``"test"`` maps to ImageNet's ``"validation"``).
    data_dir: the tfds data directory (default: tfds's own default).
    image_size: ``(H, W)`` to resize to (tfds sets; default: the first
      image's size, right for fixed-size sets such as mnist and cifar10).
    mean, std: per-channel normalization applied after scaling to [0, 1].
    seed: BlockMNIST's placement seed.
    **kwargs: `max_boxes` (VOC), `keep_difficult` (VOC, default True: boxes
      marked "difficult" are kept and flagged in ``"box_difficult"``; False
      drops them, as VOC's detection evaluation ignores them), `attribute`
      (CelebA, default "Smiling"), `classes` (BlockMNIST).
  """
  if name in ("blockmnist", "blockmnist_top"):
    from saljax.data import blockmnist
    placement = "top" if name == "blockmnist_top" else "random"
    arrays = blockmnist.load(split, placement=placement, seed=seed, **kwargs)
    n_cls = len(kwargs["classes"]) if kwargs.get("classes") is not None else blockmnist.NUM_CLASSES
    return ArrayDataset(name, split, arrays, num_classes=n_cls, mean=mean, std=std)
  if name not in SPECS:
    raise ValueError(
        f"dataset: expected one of {sorted(SPECS) + ['blockmnist', 'blockmnist_top']}, got {name!r}")
  if image_size is not None:
    image_size = tuple(image_size)
    if len(image_size) != 2 or min(image_size) < 1:
      raise ValueError(f"image_size: expected (H, W) of positive ints, got {image_size!r}")
  return TfdsDataset(name, split, data_dir=data_dir, image_size=image_size, mean=mean,
                     std=std, **kwargs)
