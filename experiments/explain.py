"""Runs registered explainers over a dataset split and stores the maps chunk by chunk.

    python -m experiments.explain --config=experiments/configs/blockmnist_standard.py \
        --workdir=runs/bm_std --config.explain.methods='("gradient","smoothgrad")'

The model is the pretrained one (``model.pretrained``) or the one a train run
left in ``explain.train_workdir`` (default: the workdir itself). Layout::

    maps/manifest.json                 methods, chunks, shapes, model step
    maps/inputs/chunk_00000.npz        image, label, target, index (+ gt_mask where known)
    maps/<method>/chunk_00000.npz      attribution (pixel methods: like image; layer: [B, h, w])
    overlays/<method>_<i>.png          the first `explain.overlays` examples

Chunks are written atomically (temporary file, then rename), and a chunk
already on disk is not recomputed, so a killed run resumes where it stopped.
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

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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


def save_npz(path: str, **arrays) -> None:
  """Writes `path` atomically: a reader never sees a half-written chunk."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  C.atomic_write(path, lambda tmp: np.savez(tmp, **arrays))


def chunk_path(maps_dir: str, what: str, i: int) -> str:
  return os.path.join(maps_dir, what, f"chunk_{i:05d}.npz")


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
    fig.savefig(os.path.join(out, f"{name}_{i}.png"), dpi=80, bbox_inches="tight")
    plt.close(fig)


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
  writer = slog.MetricWriter(workdir)
  writer.write_config(config)
  progress = slog.Progress(num_chunks * len(methods), name="explain",
                           every_seconds=config.train.progress_every_s)
  predict = jax.jit(lambda x: jnp.argmax(trained.f(x), -1).astype(jnp.int32))
  base_key = jax.random.key(config.seed)
  # What is already stored, as process 0 sees it, decided once before any work,
  # so every process skips the same chunks (and the same collectives).
  stored = parallel.broadcast_from_writer(np.array(
      [[os.path.exists(chunk_path(maps_dir, what, c)) for what in ["inputs", *methods]]
       for c in range(num_chunks)], np.int32).reshape(num_chunks, len(methods) + 1))
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
      save_npz(chunk_path(maps_dir, "inputs", c), image=batch["image"][:valid],
               label=batch["label"][:valid], target=target[:valid], index=idx[:valid], **extra)
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
        save_npz(chunk_path(maps_dir, m, c), attribution=a)
        if c == 0 and ecfg.overlays:
          _save_overlays(workdir, m, batch["image"][:valid], a, int(ecfg.overlays))
      progress.update(done)
  manifest = {"methods": methods, "num_examples": n, "chunk_size": chunk, "num_chunks": num_chunks,
              "dataset": config.data.name, "split": ecfg.split, "model": trained.model.name,
              "model_step": trained.step, "target": ecfg.target,
              "kinds": {m: entries[m].kind for m in methods}}
  if parallel.is_writer():
    C.atomic_write_text(os.path.join(maps_dir, "manifest.json"), json.dumps(manifest, indent=2))
  progress.update(done, force=True)
  writer.close()
  return manifest


def load_maps(maps_dir: str, method: str | None = None):
  """All chunks of `method` (or the inputs when None) concatenated: a dict of arrays."""
  what = "inputs" if method is None else method
  d = os.path.join(maps_dir, what)
  if not os.path.isdir(d):
    raise FileNotFoundError(f"no stored maps for {what!r} under {maps_dir}; run experiments.explain first")
  files = sorted(f for f in os.listdir(d) if f.startswith("chunk_") and f.endswith(".npz")
                 and ".tmp" not in f)
  parts = [dict(np.load(os.path.join(d, f))) for f in files]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


if __name__ == "__main__":
  C.app_main(run)
