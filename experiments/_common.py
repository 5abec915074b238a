"""What every experiment binary shares: config and workdir checks, datasets,
models, optimizers, the train state, and loading a trained model."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import tempfile
import uuid
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import _models
from experiments.configs import base as base_config
from saljax import checkpoint as ckpt_lib
from saljax import model as M
from saljax.data import pipelines


def atomic_write(path, write: Callable[[pathlib.Path], None]) -> None:
  """Runs ``write(tmp)`` on a temporary name beside `path`, then renames it
  into place, so a killed run never leaves a half-written file."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def atomic_write_text(path, text: str) -> None:
  atomic_write(path, lambda p: p.write_text(text))


def save_figure(fig, path, **savefig_kwargs) -> None:
  """Writes a matplotlib figure as PNG atomically, then closes it (a binary
  that draws many figures would otherwise keep every one in memory)."""
  import matplotlib.pyplot as plt
  atomic_write(path, lambda p: fig.savefig(p, format="png", **savefig_kwargs))
  plt.close(fig)


# The temporary names atomic_write gives: `.<name>.<8 hex>.tmp<suffix>`.
_TMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp(\.[A-Za-z0-9]+)?$")


def clean_temporaries(directory, prefixes: tuple[str, ...] | None = None) -> list[str]:
  """Removes what killed `atomic_write` calls left in `directory` (not below),
  only those of files named with one of `prefixes` when given; returns the
  names removed. Only a writer holding its binary's `WorkdirLock` calls it."""
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    return []
  gone = []
  for f in sorted(os.listdir(directory)):
    if _TMP_NAME.match(f) and (prefixes is None or f[1:].startswith(tuple(prefixes))):
      try:
        os.unlink(os.path.join(directory, f))
        gone.append(f)
      except FileNotFoundError:
        pass
  return gone


def canonical_json(obj) -> str:
  """One text per value: sorted keys, no spaces, tuples as lists (provenance keys)."""
  from saljax import logging as slog
  return json.dumps(slog.config_to_dict(obj), sort_keys=True, separators=(",", ":"))


def key_of(provenance) -> str:
  """The SHA-256 of a provenance record's canonical JSON."""
  return hashlib.sha256(canonical_json(provenance).encode()).hexdigest()


def describe_change(want: dict, got: dict | None) -> str:
  """Which fields of two provenance records differ, for the warning."""
  if not isinstance(got, dict):
    return "it has no provenance record (written by an older saljax)"
  diff = [f"{k}: stored {canonical_json(got.get(k))[:80]} vs now {canonical_json(want.get(k))[:80]}"
          for k in sorted(set(want) | set(got)) if canonical_json(want.get(k)) != canonical_json(got.get(k))]
  return "; ".join(diff) or "the keys differ"


class UnitStore:
  """Results of units of work (a sanity curve, a ROAR retraining), one ``.npz``
  per unit under `directory`, each with the provenance record of what made
  it, so a rerun reuses exactly the units whose record is unchanged.

  `get` returns None (and warns, naming the file and what changed or why it
  cannot be read) for a unit to recompute; `put` writes atomically.
  """

  def __init__(self, directory: str):
    self.directory = os.fspath(directory)
    self.reused: list[str] = []
    self.computed: list[str] = []

  def path(self, name: str) -> str:
    return os.path.join(self.directory, f"{name}.npz")

  def get(self, name: str, provenance: dict) -> dict[str, np.ndarray] | None:
    from absl import logging
    path = self.path(name)
    if not os.path.exists(path):
      return None
    try:
      with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
      got = json.loads(str(arrays.pop("provenance")))
    except Exception as e:  # truncated or damaged: recompute, naming it
      logging.warning("stored result %s is unreadable (%s: %s): recomputing it", path,
                      type(e).__name__, e)
      return None
    if canonical_json(got) != canonical_json(provenance):
      logging.warning("stored result %s was made by something else (%s): recomputing it", path,
                      describe_change(provenance, got))
      return None
    self.reused.append(name)
    return arrays

  def put(self, name: str, provenance: dict, **arrays) -> None:
    self.computed.append(name)
    if jax.process_index() != 0:
      return
    os.makedirs(self.directory, exist_ok=True)
    record = np.array(canonical_json(provenance))
    atomic_write(self.path(name), lambda p: np.savez(p, provenance=record, **arrays))


def model_record(name: str, step: int, digest: str) -> dict:
  """The model part of a provenance record."""
  return {"name": name, "step": int(step), "weights_sha256": digest}


def data_record(config, split: str, **extra) -> dict:
  """The data part of a provenance record (the data config but its location)."""
  from saljax import logging as slog
  d = {k: v for k, v in slog.config_to_dict(config.data).items() if k != "data_dir"}
  return {**d, "split": split, **extra}


def weights_digest(variables) -> str:
  """The SHA-256 of a model's weights (every leaf's path, dtype, shape and bytes):
  what explain, sanity and roar key their stored results by."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


# ----------------------------------------------------------------------------
# The absl entry point shared by every binary.


def app_main(run: Callable[[Any, str], Any], doc: str = "") -> None:
  """Defines ``--config`` (an ml_collections file, overridable field by field:
  ``--config.train.steps=10``) and ``--workdir``, then calls ``run(config,
  workdir)`` under `absl.app`. Flags are defined here, when a binary runs as
  ``__main__``, so the binaries can be imported together (tests, notebooks)."""
  from absl import app, flags, logging
  from ml_collections import config_flags

  config = config_flags.DEFINE_config_file("config", None, "Path to an experiment config file.")
  workdir = flags.DEFINE_string("workdir", None, "Directory for checkpoints, maps and logs.")
  distributed = flags.DEFINE_bool(
      "distributed", False, "join a jax.distributed run whose cluster JAX reads from the"
      " environment (SLURM, TPU pods); implied by --coordinator_address")
  address = flags.DEFINE_string("coordinator_address", None,
                                "HOST:PORT of process 0, for a multi-process run")
  num_processes = flags.DEFINE_integer("num_processes", None, "processes in the run")
  process_id = flags.DEFINE_integer("process_id", None, "this process's index, 0..N-1")
  flags.mark_flags_as_required(["config", "workdir"])

  binary = run.__module__.rsplit(".", 1)[-1]
  if binary == "__main__":
    import __main__
    binary = os.path.splitext(os.path.basename(getattr(__main__, "__file__", "run")))[0]

  def main(argv):
    from saljax import logging as slog
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if address.value or distributed.value:
      from saljax import parallel
      parallel.initialize_distributed(address.value, num_processes.value, process_id.value)
      # On the console too: a multi-process launch shows which process is which.
      logging.warning("process %d of %d, %d devices in all", jax.process_index(),
                      jax.process_count(), jax.device_count())
    # Library INFO (Orbax's checkpoint chatter) goes to <workdir>/logs/<binary>.log;
    # the console keeps warnings and the progress line.
    with slog.console(check_workdir(workdir.value), binary):
      out = run(config.value, workdir.value)
      if isinstance(out, dict):
        logging.info("done: %s", {k: v for k, v in out.items() if k != "state"})

  jax.config.config_with_absl()
  app.run(main)


# ----------------------------------------------------------------------------
# Config and workdir.


def _walk(c, prefix=""):
  for k, v in c.items():
    path = f"{prefix}{k}"
    if isinstance(v, (ml_collections.ConfigDict, dict)) and path not in (
        "explain.options", "evaluate.options"):
      yield from _walk(v, path + ".")
    else:
      yield path


def check_config(config: Any) -> ml_collections.ConfigDict:
  """Raises ValueError naming every field the schema (configs/base.py) lacks."""
  if not isinstance(config, (ml_collections.ConfigDict, dict)):
    raise TypeError(f"config: expected an ml_collections.ConfigDict, got {type(config).__name__}")
  known = set(_walk(base_config.base()))
  got = set(_walk(config))
  unknown = sorted(got - known)
  if unknown:
    import difflib
    hints = {u: difflib.get_close_matches(u, known, n=1) for u in unknown}
    hint = "; ".join(f"{u} (did you mean {h[0]}?)" if h else u for u, h in hints.items())
    raise ValueError(f"config: unknown field(s): {hint}. Known fields are in experiments/configs/base.py")
  # Fill what a hand-built config left out with the defaults.
  def merge(dst, src):
    for k, v in src.items():
      if isinstance(v, dict) and isinstance(dst.get(k), dict):
        merge(dst[k], v)
      else:
        dst[k] = v
    return dst

  src = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return ml_collections.ConfigDict(merge(base_config.base().to_dict(), src))


def check_workdir(workdir: str) -> str:
  """Creates `workdir` and checks it can be written, or raises ValueError."""
  if not workdir or not isinstance(workdir, (str, os.PathLike)):
    raise ValueError(f"workdir: expected a directory path, got {workdir!r}")
  workdir = os.path.abspath(os.fspath(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test_"):
      pass
  except OSError as e:
    raise ValueError(f"workdir: {workdir} cannot be written: {e.strerror or e}") from e
  return workdir


# ----------------------------------------------------------------------------
# Data.


def _norm(v):
  if v is None:
    return None
  return np.asarray(v, np.float32)


def load_dataset(config, split: str, preprocess: Callable | None = None) -> pipelines.Dataset:
  d = config.data
  if d.name == "photos":
    return photos_dataset(config, preprocess)
  kw = {}
  if d.name.startswith("blockmnist"):
    kw["seed"] = d.seed
    if d.image_size is not None:  # (2s, s): blocks of side s (default 28)
      hw = tuple(int(v) for v in d.image_size)
      if len(hw) != 2 or hw[0] != 2 * hw[1]:
        raise ValueError(f"data.image_size: BlockMNIST images are (2s, s), got {d.image_size!r}")
      kw["size"] = hw[1]
  if d.name == "voc2007":
    kw["keep_difficult"] = d.keep_difficult
  return pipelines.load(d.name, split, data_dir=d.data_dir, image_size=d.image_size,
                        mean=_norm(d.mean), std=_norm(d.std), **kw)


def photos_dataset(config, preprocess: Callable | None = None) -> pipelines.ArrayDataset:
  """The bundled photos as a dataset: through a pretrained model's own
  `preprocess` when given, else resized (shorter side, centre crop) to
  `data.image_size` and normalized with `data.mean`/`data.std`."""
  from saljax import data as data_lib

  photos = data_lib.photos()
  names = sorted(photos)
  imgs = []
  for n in names:
    img = np.asarray(photos[n])
    if img.ndim == 2:
      img = np.repeat(img[..., None], 3, -1)
    imgs.append(img[..., :3].astype(np.uint8))
  label = np.zeros(len(names), np.int32)  # no labels: explain the predicted class
  if preprocess is not None:
    arrays = {"image": np.asarray(preprocess(imgs), np.float32), "label": label}
    return pipelines.ArrayDataset("photos", "test", arrays, num_classes=1000)
  size = tuple(config.data.image_size or (224, 224))
  imgs = [pipelines._resize(i, size, crop=True) for i in imgs]
  arrays = {"image": np.stack(imgs).astype(np.float32) / 255.0, "label": label}
  return pipelines.ArrayDataset("photos", "test", arrays, num_classes=1000,
                                mean=_norm(config.data.mean), std=_norm(config.data.std))


def input_bounds(config, channels: int):
  """The [0, 1] pixel range mapped through mean/std, as a scalar pair when it is one."""
  mean = np.broadcast_to(np.asarray(config.data.mean, np.float32), (channels,))
  std = np.broadcast_to(np.asarray(config.data.std, np.float32), (channels,))
  lo, hi = (0 - mean) / std, (1 - mean) / std
  if np.allclose(lo, lo[0]) and np.allclose(hi, hi[0]):
    return float(lo[0]), float(hi[0])
  return None  # per-channel ranges differ; the attack is not clipped


# ----------------------------------------------------------------------------
# Models and train state.


@dataclasses.dataclass
class Model:
  """A model ready for the binaries: ``apply(variables, x, train)``."""
  name: str
  module: Any
  default_layer: str | None
  pretrained: Any = None  # a saljax.models Classifier when pretrained

  def init(self, key, image_shape):
    x = jnp.zeros((1, *image_shape), jnp.float32)
    # One compiled init instead of one small compile per parameter.
    return jax.jit(lambda k: self.module.init(k, x, train=False))(key)

  def apply(self, variables, x, train: bool = False):
    """Returns ``(logits, new_batch_stats or None)``."""
    if train and "batch_stats" in variables:
      logits, upd = self.module.apply(variables, x, train=True, mutable=["batch_stats"])
      return logits, upd["batch_stats"]
    return self.module.apply(variables, x, train=False), None


def build_model(config, num_classes: int, image_shape=None) -> Model:
  if config.model.pretrained:
    from saljax import models as zoo
    clf = zoo.load_pretrained(config.model.name)
    return Model(config.model.name, None, getattr(clf, "default_layer", None), pretrained=clf)
  built = _models.build(config.model, num_classes, image_shape)
  return Model(built.name, built.module, built.default_layer)


def make_optimizer(tcfg) -> optax.GradientTransformation:
  """The optimizer of `tcfg`; with ``train.trainable`` (top-level parameter
  names), only those are updated and every other parameter gets a zero update
  (``optax.set_to_zero``), so it stays bit-identical (Prompt-CAM's frozen ViT)."""
  tx = _base_optimizer(tcfg)
  trainable = tuple(tcfg.get("trainable", ()) or ())
  if not trainable:
    return tx
  if not all(isinstance(t, str) and t for t in trainable):
    raise ValueError(f"train.trainable: expected top-level parameter names, got {trainable!r}")

  def labels(params):
    return {k: jax.tree_util.tree_map(lambda _, k=k: "train" if k in trainable else "freeze", v)
            for k, v in params.items()}

  return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)


def _base_optimizer(tcfg) -> optax.GradientTransformation:
  steps = max(int(tcfg.steps), 1)
  if tcfg.schedule == "constant":
    lr = optax.constant_schedule(tcfg.learning_rate)
    if tcfg.warmup_steps:
      lr = optax.join_schedules(
          [optax.linear_schedule(0.0, tcfg.learning_rate, tcfg.warmup_steps), lr], [tcfg.warmup_steps])
  elif tcfg.schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, tcfg.learning_rate, min(tcfg.warmup_steps, steps - 1),
                                            steps)
  else:
    raise ValueError(f"train.schedule: expected 'constant' or 'cosine', got {tcfg.schedule!r}")
  if tcfg.optimizer == "adam":
    tx = optax.adam(lr)
    if tcfg.weight_decay:
      tx = optax.chain(optax.add_decayed_weights(tcfg.weight_decay), tx)
    return tx
  if tcfg.optimizer == "adamw":
    return optax.adamw(lr, weight_decay=tcfg.weight_decay)
  if tcfg.optimizer == "sgd":
    tx = optax.sgd(lr, momentum=tcfg.momentum or None, nesterov=False)
    if tcfg.weight_decay:
      tx = optax.chain(optax.add_decayed_weights(tcfg.weight_decay), tx)
    return tx
  raise ValueError(f"train.optimizer: expected 'adam', 'adamw' or 'sgd', got {tcfg.optimizer!r}")


def init_key(seed: int):
  """The key that initializes parameters: the "rbg" generator, which XLA:CPU
  compiles much faster than threefry for many initializers (as saljax.models.init)."""
  return jax.random.key(int(seed), impl="rbg")


def init_state(model: Model, tx, key, image_shape) -> dict[str, Any]:
  variables = model.init(key, image_shape)
  params = variables["params"]
  return {"step": jnp.zeros((), jnp.int32), "params": params,
          "batch_stats": variables.get("batch_stats", {}), "opt_state": tx.init(params)}


def variables_of(state) -> dict[str, Any]:
  v = {"params": state["params"]}
  if state.get("batch_stats"):
    v["batch_stats"] = state["batch_stats"]
  return v


class WorkdirLock:
  """An exclusive ``fcntl.flock`` on ``<workdir>/.lock`` for as long as it is held.

  Two trainers on one workdir would interleave checkpoints and logs; the
  second is refused at start. The kernel drops a flock when its process dies,
  so a killed trainer never leaves the workdir locked.
  """

  def __init__(self, workdir: str, binary: str = "train"):
    # One lock per binary: explain may run on the workdir a trainer is using.
    self.path = os.path.join(workdir, ".lock" if binary == "train" else f".{binary}.lock")
    self.binary = binary
    self._fh = None

  def acquire(self) -> "WorkdirLock":
    import fcntl
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fh = open(self.path, "a+")
    try:
      fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      fh.seek(0)
      holder = fh.read().strip() or "unknown"
      fh.close()
      raise RuntimeError(
          f"workdir {os.path.dirname(self.path)} is in use: expected no other {self.binary}, but"
          f" {self.path} is locked by {holder}. Wait for it to finish, or use another --workdir"
      ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    fh.flush()
    self._fh = fh
    return self

  def release(self) -> None:
    if self._fh is not None:
      import fcntl
      fcntl.flock(self._fh, fcntl.LOCK_UN)
      self._fh.close()
      self._fh = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


@contextlib.contextmanager
def writer_of(workdir: str, binary: str, dirs=(), prefixes: tuple[str, ...] = ()):
  """Holds `binary`'s lock on `workdir` (process 0) and removes the temporary
  files a killed run of it left: everything temporary in `dirs`, and in
  `workdir` itself those of files starting with `prefixes` (the workdir is
  shared with other binaries, whose temporaries are theirs)."""
  lock = WorkdirLock(workdir, binary)
  writer = jax.process_index() == 0
  if writer:
    lock.acquire()
  try:
    if writer:
      for d in dirs:
        clean_temporaries(d)
      clean_temporaries(workdir, (f"config.{binary}.", f"metrics.{binary}.", *prefixes))
    yield
  finally:
    lock.release()


def checkpoint_manager(config, workdir: str, model: Model, state, **kw) -> ckpt_lib.CheckpointManager:
  return ckpt_lib.CheckpointManager(
      os.path.join(workdir, "checkpoints"),
      fingerprint=ckpt_lib.fingerprint(model.name, {"params": state["params"],
                                                    "batch_stats": state["batch_stats"]}),
      max_to_keep=config.train.max_to_keep, best_metric=config.train.best_metric or None, **kw)


@dataclasses.dataclass
class Trained:
  """A model ready to explain: the plain forward, the tapped forward, and its data."""
  model: Model
  variables: Any
  f: Callable
  tapped: M.Tapped
  step: int
  digest: str = ""  # weights_digest of the variables (what stored results are keyed by)


def load_trained(config, workdir: str, image_shape, num_classes: int,
                 model: Model | None = None) -> Trained:
  """The pretrained model, or the model of a train run restored from its checkpoints.

  Raises FileNotFoundError when there is no checkpoint, ValueError when it is
  another model's.
  """
  model = build_model(config, num_classes, image_shape) if model is None else model
  if model.pretrained is not None:
    clf = model.pretrained
    digest = weights_digest(clf.params)
    if jax.process_count() > 1:  # one global copy, so jit can mix it with a global batch
      from saljax import parallel
      clf = clf.with_params(parallel.replicate(clf.params))
    return Trained(model, None, clf, clf.tapped, 0, digest)
  tx = make_optimizer(config.train)
  state = init_state(model, tx, init_key(config.seed), image_shape)
  src = config.explain.train_workdir or workdir
  # A reader: it must not clean up (or move aside) what a trainer still writing to `src` owns.
  mgr = checkpoint_manager(config, src, model, state, read_only=True)
  best = config.explain.checkpoint == "best"
  if (mgr.best_step() if best else mgr.latest_step()) is None:
    raise FileNotFoundError(
        f"no {'best ' if best else ''}checkpoint of model {model.name!r} under {src}/checkpoints:"
        " run experiments.train with this config first, or set explain.train_workdir")
  step, state, _ = mgr.restore(state, best=best)
  mgr.close()
  variables = variables_of(state)
  digest = weights_digest(variables)  # before replication: every process holds all of it
  if jax.process_count() > 1:  # one global copy, so jit can mix it with a global batch
    from saljax import parallel
    variables = parallel.replicate(variables)
  # The variables are data of the tapped model: every checkpoint of one
  # architecture shares the explainers' compiled programs.
  tapped = M.from_linen(model.module, variables, apply_kwargs={"train": False},
                        example=jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  return Trained(model, variables, tapped.as_model(), tapped, step, digest)
