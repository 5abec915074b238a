"""Runs registered explainers over a dataset split and stores the maps chunk by chunk.

    python -m experiments.explain --config=experiments/configs/blockmnist_standard.py \
        --workdir=runs/bm_std --config.explain.methods='("gradient","smoothgrad")'

The model is the pretrained one (``model.pretrained``) or the one a train run
left in ``explain.train_workdir`` (default: the workdir itself). Layout::

    maps/manifest.json                 methods, model step and weights digest, every chunk's
                                       provenance key and SHA-256 (written last)
    maps/inputs/chunk_00000.npz        image, label, target, index (+ gt_mask where known), provenance
    maps/<method>/chunk_00000.npz      attribution (pixel methods: like image; layer: [B, h, w]), provenance
    overlays/<method>_<i>.png          the first `explain.overlays` examples

Chunks are written atomically (temporary file, then rename), each with the
provenance record of what made it (`provenance`): a chunk on disk is reused
only when its record equals this run's, so a killed run resumes where it
stopped, and a changed model, option or target recomputes what it changed
(a warning names the chunk and the difference), as does a chunk that cannot
be read.
Every chunk has `explain.chunk_size` rows (the last is padded by repetition
and sliced back), so each explainer compiles once.

Several hosts: every binary takes ``--coordinator_address=HOST:PORT
--num_processes=N --process_id=I`` (or ``--distributed`` to read the cluster
from the environment, as on SLURM or TPU pods) and joins one
`jax.distributed` run. Then the mesh spans every process's devices, each
process reads only its share of every chunk (``explain.chunk_size`` must be a
multiple of the global device count), and process 0 alone writes.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from absl import logging

from experiments import _common as C
from saljax import explainers
from saljax import logging as slog
from saljax import parallel



def check_methods(names, what="explain.methods") -> list[str]:
  """Every name must be a registered explainer; raises ValueError listing them otherwise."""
  if isinstance(names, str):
    names = (names,)
  names = list(names)
  known = explainers.names()
  unknown = [n for n in names if n not in known]
  if unknown or not names:
    raise ValueError(f"{what}: unknown explainer(s) {unknown or names}; registered: {known}")
  return names


def save_npz(path: str, **arrays) -> str:
  """Writes `path` atomically (a reader never sees a half-written chunk);
  returns the SHA-256 of the file written."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  digest = []

  def write(tmp):
    np.savez(tmp, **arrays)
    digest.append(_sha256_file(tmp))
  C.atomic_write(path, write)
  return digest[0]


def _sha256_file(path) -> str:
  with open(path, "rb") as fh:
    return hashlib.sha256(fh.read()).hexdigest()


def chunk_path(maps_dir: str, what: str, i: int) -> str:
  return os.path.join(maps_dir, what, f"chunk_{i:05d}.npz")


# Version of the stored chunk format; part of every provenance record.
FORMAT = 2  # 1: chunks without provenance
_FIELDS = {"inputs": ("image", "label", "target", "index")}


def read_chunk(path: str, rows: int | None = None, fields=None) -> tuple[dict, dict | None, str]:
  """Reads a stored chunk: ``(arrays, provenance record or None, sha256 of the file)``.

  Raises ValueError naming `path` when it cannot be read (truncated, not a
  zip), lacks `fields`, or has another number of rows than `rows`.
  """
  try:
    with open(path, "rb") as fh:
      raw = fh.read()
    with np.load(io.BytesIO(raw)) as z:
      arrays = {k: z[k] for k in z.files}
  except Exception as e:  # BadZipFile, EOFError, ValueError, CRC errors, ...
    raise ValueError(f"chunk {path} is unreadable ({type(e).__name__}: {e}); run"
                     " experiments.explain again to recompute it") from e
  prov = arrays.pop("provenance", None)
  prov = json.loads(str(prov)) if prov is not None else None
  missing = [f for f in (fields or ()) if f not in arrays]
  if missing:
    raise ValueError(f"chunk {path}: expected arrays {list(fields)}, {missing} missing")
  if rows is not None:
    short = {k: v.shape[:1] for k, v in arrays.items() if v.ndim == 0 or v.shape[0] != rows}
    if short:
      raise ValueError(f"chunk {path}: expected {rows} rows, got first dimensions {short}")
  return arrays, prov, hashlib.sha256(raw).hexdigest()


def ground_truth_mask(batch: dict[str, np.ndarray], target: np.ndarray, hw) -> np.ndarray | None:
  """Where the explained object is, when the data say: BlockMNIST's signal
  block, the birds' segmentation, or the union of the target class's boxes."""
  if "signal_mask" in batch:
    return batch["signal_mask"].astype(bool)
  if "segmentation_mask" in batch:
    return batch["segmentation_mask"].astype(bool)
  if "boxes" in batch:
    h, w = hw
    yy = np.arange(h)[None, None, :, None] + 0.5
    xx = np.arange(w)[None, None, None, :] + 0.5
    b = batch["boxes"] * np.array([h, w, h, w], np.float32)
    ok = batch["box_labels"] == target[:, None]
    inside = ((yy >= b[..., 0, None, None]) & (yy < b[..., 2, None, None]) & (xx >= b[..., 1, None, None])
              & (xx < b[..., 3, None, None]) & ok[..., None, None])
    return inside.any(1)
  return None


def _options(config, name: str, entry, trained: C.Trained) -> dict[str, Any]:
  opts = dict(config.explain.options.get(name, {}) or {})
  if entry.kind == "layer" and "layer" not in opts:
    layer = config.explain.layer or trained.model.default_layer
    if layer is not None:
      opts["layer"] = layer
  return opts


def _overlay_paths(workdir, name, n):
  return [os.path.join(workdir, "overlays", f"{name}_{i}.png") for i in range(n)]


def _save_overlays(workdir, name, images, maps, n):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  out = os.path.join(workdir, "overlays")
  os.makedirs(out, exist_ok=True)
  for i in range(min(n, len(images))):
    img = images[i]
    img = (img - img.min()) / max(float(np.ptp(img)), 1e-12)
    m = maps[i]
    m = np.abs(m).sum(-1) if m.ndim == 3 else np.abs(m)
    fig, ax = plt.subplots(1, 2, figsize=(4, 2.2))
    ax[0].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
    ax[1].imshow(m, cmap="inferno")
    for a in ax:
      a.axis("off")
    ax[1].set_title(name, fontsize=7)
    C.save_figure(fig, os.path.join(out, f"{name}_{i}.png"), dpi=80, bbox_inches="tight")


def provenance(config, trained: C.Trained, what: str, c: int, n: int, methods=(),
               entries=None) -> dict[str, Any]:
  """What produced chunk `c` of `what` (``"inputs"`` or a method): the model
  (name, checkpoint step, weights digest), the data (config, split, rows,
  chunk size), the target rule, and for a method its name and resolved
  options (and, for a stochastic one, the seed and position its key is
  folded from). A stored chunk is reused only when its record equals this."""
  ecfg = config.explain
  chunk = int(ecfg.chunk_size)
  data = {k: v for k, v in slog.config_to_dict(config.data).items() if k != "data_dir"}
  rec = {"format": FORMAT, "what": what,
         "model": {"name": trained.model.name, "step": int(trained.step),
                   "weights_sha256": trained.digest},
         "data": {**data, "split": ecfg.split, "rows": [c * chunk, min((c + 1) * chunk, n)],
                  "chunk_size": chunk},
         "target": ecfg.target}
  if what != "inputs":
    e = entries[what]
    rec["options"] = _options(config, what, e, trained)
    rec["randomness"] = ({"seed": int(config.seed), "chunk": c, "position": list(methods).index(what)}
                         if e.stochastic else None)
  return rec


def _check_stored(path: str, want: dict, rows: int, fields) -> tuple[bool, str | None]:
  """``(reusable, sha256)`` of the chunk at `path`; warns naming it and the
  reason when it exists but cannot be reused."""
  if not os.path.exists(path):
    return False, None
  try:
    _, got, sha = read_chunk(path, rows, fields)
  except ValueError as e:
    logging.warning("%s: recomputing it", e)
    return False, None
  if C.canonical_json(got) != C.canonical_json(want):
    logging.warning("chunk %s was made by something else (%s): recomputing it", path,
                    C.describe_change(want, got))
    return False, None
  return True, sha


def run(config, workdir: str) -> dict[str, Any]:
  """Explains `explain.num_examples` examples of `explain.split` with every
  method of `explain.methods`; returns the manifest."""
  config = C.check_config(config)
  workdir = C.check_workdir(workdir)
  ecfg = config.explain
  methods = check_methods(ecfg.methods)
  if ecfg.target not in ("label", "predicted"):
    raise ValueError(f"explain.target: expected 'label' or 'predicted', got {ecfg.target!r}")
  if ecfg.checkpoint not in ("latest", "best"):
    raise ValueError(f"explain.checkpoint: expected 'latest' or 'best', got {ecfg.checkpoint!r}")
  chunk = int(ecfg.chunk_size)
  if chunk < 1 or int(ecfg.num_examples) < 1:
    raise ValueError(f"explain.chunk_size and explain.num_examples: expected ints >= 1, got"
                     f" {ecfg.chunk_size}, {ecfg.num_examples}")
  model = C.build_model(config, 0) if config.model.pretrained else None
  preprocess = model.pretrained.preprocess if model is not None else None
  ds = C.load_dataset(config, ecfg.split, preprocess)
  trained = C.load_trained(config, workdir, ds.image_shape, ds.num_classes, model)
  if ecfg.target == "label" and config.data.name == "photos":
    raise ValueError("explain.target: the bundled photos have no labels; use 'predicted'")
  entries = {m: explainers.entry(m) for m in methods}
  for m, e in entries.items():
    if e.kind == "layer" and not (ecfg.layer or trained.model.default_layer or
                                  "layer" in (ecfg.options.get(m, {}) or {})):
      raise ValueError(f"{m}: a layer method needs explain.layer; the model has {list(trained.tapped.layer_names)}")

  n = min(int(ecfg.num_examples), len(ds))
  num_chunks = -(-n // chunk)
  # Several processes (jax.distributed): one global mesh; each process reads
  # its contiguous share of every chunk, and only process 0 writes.
  procs, pid = jax.process_count(), jax.process_index()
  if procs > 1 and chunk % jax.device_count():
    raise ValueError(f"explain.chunk_size: expected a multiple of the {jax.device_count()} devices"
                     f" of the {procs} processes, got {chunk}")
  per_process = chunk // procs
  maps_dir = os.path.join(workdir, "maps")
  whats = ["inputs", *methods]
  # One explain per workdir: then the temporaries left there are a killed run's.
  dirs = [maps_dir, os.path.join(workdir, "overlays"), *(os.path.join(maps_dir, w) for w in whats)]
  with C.writer_of(workdir, "explain", dirs):
    return _run(config, workdir, ds, trained, methods, entries, n, num_chunks, per_process,
                maps_dir, whats)


def _run(config, workdir, ds, trained, methods, entries, n, num_chunks, per_process, maps_dir,
         whats):
  ecfg = config.explain
  chunk = int(ecfg.chunk_size)
  pid, procs = jax.process_index(), jax.process_count()
  writer = slog.MetricWriter(workdir, name="explain", tensorboard=False, fresh=True)
  writer.write_config(config, "explain")
  progress = slog.Progress(num_chunks * len(methods), name="explain",
                           every_seconds=config.train.progress_every_s)
  predict = jax.jit(lambda x: jnp.argmax(trained.f(x), -1).astype(jnp.int32))
  base_key = jax.random.key(config.seed)
  prov = {(w, c): provenance(config, trained, w, c, n, methods, entries)
          for c in range(num_chunks) for w in whats}
  rows_of = lambda c: min((c + 1) * chunk, n) - c * chunk
  # What is already stored and made by exactly this model, data, method and
  # options, as process 0 sees it, decided once before any work, so every
  # process skips the same chunks (and the same collectives).
  sha: dict[tuple[str, int], str] = {}
  ok = np.zeros((num_chunks, len(whats)), np.int32)
  if parallel.is_writer():
    for c in range(num_chunks):
      for j, w in enumerate(whats):
        reuse, digest = _check_stored(chunk_path(maps_dir, w, c), prov[(w, c)], rows_of(c),
                                      _FIELDS.get(w, ("attribution",)))
        ok[c, j] = reuse
        if reuse:
          sha[(w, c)] = digest
  stored = parallel.broadcast_from_writer(ok)
  computed_first = set()  # methods whose chunk 0 was made now (their overlays follow it)
  done = 0
  for c in range(num_chunks):
    idx = np.arange(c * chunk, (c + 1) * chunk)
    valid = int((idx < n).sum())
    if stored[c].all():
      done += len(methods)
      continue
    mine = idx[pid * per_process:(pid + 1) * per_process]
    local = ds.batch(np.minimum(mine, n - 1))
    if procs > 1:
      shared = parallel.global_batch(local)
      x, labels = shared["image"], shared["label"]
      batch = parallel.gather(shared)  # the whole chunk, which process 0 writes
    else:
      x, labels, batch = jnp.asarray(local["image"]), jnp.asarray(local["label"]), local
    target_in = predict(x) if ecfg.target == "predicted" else labels.astype(jnp.int32)
    target = np.asarray(parallel.gather(target_in))
    if not stored[c, 0] and parallel.is_writer():
      extra = {}
      gt = ground_truth_mask(batch, target, ds.image_shape[:2])
      if gt is not None:
        extra["gt_mask"] = gt[:valid]
      sha[("inputs", c)] = save_npz(
          chunk_path(maps_dir, "inputs", c), image=batch["image"][:valid],
          label=batch["label"][:valid], target=target[:valid], index=idx[:valid],
          provenance=np.array(C.canonical_json(prov[("inputs", c)])), **extra)
    for j, m in enumerate(methods):
      done += 1
      if stored[c, j + 1]:
        continue
      e = entries[m]
      f = trained.tapped if e.kind == "layer" else trained.f
      key = jax.random.fold_in(jax.random.fold_in(base_key, c), methods.index(m)) if e.stochastic else None
      try:
        a = e.fn(f, x, target_in, key=key, **_options(config, m, e, trained))
      except (TypeError, ValueError) as err:
        raise type(err)(f"explainer {m!r} on chunk {c}: {err}") from err
      a = np.asarray(parallel.gather(a), np.float32)[:valid]
      if parallel.is_writer():
        sha[(m, c)] = save_npz(chunk_path(maps_dir, m, c), attribution=a,
                               provenance=np.array(C.canonical_json(prov[(m, c)])))
        if c == 0:
          computed_first.add(m)
      progress.update(done)
  manifest = {"format": FORMAT, "methods": methods, "num_examples": n, "chunk_size": chunk,
              "num_chunks": num_chunks, "dataset": config.data.name, "split": ecfg.split,
              "model": trained.model.name, "model_step": trained.step,
              "model_weights_sha256": trained.digest, "target": ecfg.target,
              "kinds": {m: entries[m].kind for m in methods},
              "chunks": {w: [{"file": os.path.relpath(chunk_path(maps_dir, w, c), maps_dir),
                              "rows": rows_of(c), "key": C.key_of(prov[(w, c)]),
                              "sha256": sha.get((w, c))} for c in range(num_chunks)]
                         for w in whats}}
  if parallel.is_writer():
    # Overlays follow chunk 0: redrawn when it was made now, or one is missing
    # (a kill between the chunk and its overlays).
    k = min(int(ecfg.overlays), rows_of(0))
    for m in methods:
      if k and (m in computed_first or not all(map(os.path.exists, _overlay_paths(workdir, m, k)))):
        images = read_chunk(chunk_path(maps_dir, "inputs", 0))[0]["image"]
        _save_overlays(workdir, m, images, read_chunk(chunk_path(maps_dir, m, 0))[0]["attribution"], k)
    # Last: the manifest says the maps are complete.
    C.atomic_write_text(os.path.join(maps_dir, "manifest.json"), json.dumps(manifest, indent=2))
  progress.update(done, force=True)
  progress.close()
  writer.close()
  return manifest


def read_manifest(maps_dir: str) -> dict[str, Any]:
  """The manifest of `maps_dir`; raises FileNotFoundError / ValueError naming
  the file and the fix when it is missing, unreadable or of an older format."""
  path = os.path.join(maps_dir, "manifest.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no maps/manifest.json under {maps_dir}: run experiments.explain first")
  try:
    with open(path) as fh:
      manifest = json.load(fh)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e}): run experiments.explain"
                     " again with the same config; it checks the stored chunks and rewrites it") from e
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "chunks" not in manifest:
    raise ValueError(f"{path}: expected a manifest of format {FORMAT} (with per-chunk provenance"
                     f" keys), got format {manifest.get('format') if isinstance(manifest, dict) else None}:"
                     " run experiments.explain again to key the chunks")
  return manifest


def load_maps(maps_dir: str, method: str | None = None, manifest: dict | None = None):
  """All chunks of `method` (or the inputs when None) that the manifest lists,
  concatenated: a dict of arrays.

  Every chunk is checked against the manifest before use: its file's SHA-256
  (a truncated or rewritten chunk), its provenance key (a chunk made by
  another model, method or options) and its rows. Raises ValueError naming
  the file otherwise, FileNotFoundError when there is nothing stored.
  """
  what = "inputs" if method is None else method
  manifest = read_manifest(maps_dir) if manifest is None else manifest
  if what not in manifest["chunks"]:
    raise FileNotFoundError(f"no stored maps for {what!r} under {maps_dir} (the manifest has"
                            f" {list(manifest['chunks'])}); run experiments.explain first")
  parts = []
  for rec in manifest["chunks"][what]:
    path = os.path.join(maps_dir, rec["file"])
    if not os.path.exists(path):
      raise FileNotFoundError(f"chunk {path} listed in {maps_dir}/manifest.json is missing:"
                              " run experiments.explain again to recompute it")
    arrays, prov, sha = read_chunk(path, rec["rows"], _FIELDS.get(what, ("attribution",)))
    if sha != rec["sha256"]:
      raise ValueError(f"chunk {path} does not match {maps_dir}/manifest.json: expected SHA-256"
                       f" {rec['sha256'][:16]}..., got {sha[:16]}... (rewritten or damaged since"
                       " explain wrote it): run experiments.explain again")
    if prov is None or C.key_of(prov) != rec["key"]:
      raise ValueError(f"chunk {path} was made by something other than what"
                       f" {maps_dir}/manifest.json records (provenance key differs): run"
                       " experiments.explain again")
    parts.append(arrays)
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


if __name__ == "__main__":
  C.app_main(run)
