"""Trains a classifier with optax: standard, or adversarial (FGSM / PGD, L2 or
Linf; Goodfellow et al. 2015, Madry et al. 2018).

    python -m experiments.train --config=experiments/configs/blockmnist_robust.py \
        --workdir=runs/bm_robust --config.train.steps=3000

Writes under `workdir`: ``config.train.json``, ``metrics.jsonl`` and TensorBoard
events (process 0 only; a resume drops the records a killed run wrote past its
last checkpoint), ``logs/train.log`` (every INFO line, as a binary), and Orbax checkpoints (``checkpoints/latest`` keeps
the last `train.max_to_keep`, ``checkpoints/best`` the best by
`train.best_metric`). A restart with the same workdir resumes from the latest
complete checkpoint and ends with the same parameters as an uninterrupted run:
the batch and the attack's random start at step `s` depend only on
``(seed, s)``. SIGTERM (preemption) saves a checkpoint before exiting.
A second trainer on a workdir in use (``workdir/.lock`` held) is refused at
start; a corrupt checkpoint is refused and the newest intact one resumed from.

``train.trainable`` (top-level parameter names) trains those only; every
other parameter gets a zero update and stays bit-identical. With
``model.name="prompt_cam"`` (`saljax.models.prompt_cam`) the frozen ViT is
first loaded from ``model.backbone_workdir``, a train run of
``model.backbone`` (experiments/configs/prompt_cam_blockmnist.py).

``train.permute_labels=True`` trains on a fixed random permutation of the
training labels (the data randomization test of Adebayo et al. 2018, Sec. 4,
see `experiments.sanity`); eval then also reports ``permuted_train_accuracy``
(memorization; the paper trains to > 95%) next to ``eval_accuracy`` (chance).
"""
from __future__ import annotations

import signal
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from experiments import _common as C
from saljax import attacks
from saljax import parallel
from saljax import logging as slog
from saljax.data import pipelines



class _Preemption:
  """Sets a flag on SIGTERM so the loop saves and stops at the next step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint before exiting")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _attack_fn(config, bounds):
  """``(loss_fn, x, key) -> x_adv`` for the configured adversarial training, or None."""
  adv = config.train.adversarial
  if adv.mode == "none":
    return None
  if adv.mode not in ("fgsm", "pgd"):
    raise ValueError(f"train.adversarial.mode: expected 'none', 'fgsm' or 'pgd', got {adv.mode!r}")
  if adv.norm not in attacks.NORMS:
    raise ValueError(f"train.adversarial.norm: expected one of {list(attacks.NORMS)}, got {adv.norm!r}")
  bounds = bounds if adv.clip_to_data else None
  eps = float(adv.epsilon)
  if adv.mode == "fgsm":
    return lambda loss_fn, x, key: attacks.fgsm_perturb(loss_fn, x, eps, norm=adv.norm, bounds=bounds)
  step_size = adv.step_size if adv.step_size is not None else 2.5 * eps / adv.steps
  return lambda loss_fn, x, key: attacks.pgd_perturb(
      loss_fn, x, key, eps, step_size, steps=int(adv.steps), norm=adv.norm,
      random_start=bool(adv.random_start), bounds=bounds)


def make_steps(config, model: C.Model, tx, bounds):
  """The jitted train and eval steps."""
  attack = _attack_fn(config, bounds)
  base_key = jax.random.key(config.seed)

  def loss_of(params, batch_stats, x, y, train):
    v = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    logits, new_bs = model.apply(v, x, train=train)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits, new_bs)

  @jax.jit
  def train_step(state, x, y):
    step = state["step"]
    x_in = x
    if attack is not None:
      # The attack sees the model in inference mode (running BN statistics),
      # so generating examples does not move the statistics.
      v = {"params": state["params"], **({"batch_stats": state["batch_stats"]} if state["batch_stats"] else {})}
      loss_fn = lambda z: optax.softmax_cross_entropy_with_integer_labels(model.apply(v, z)[0], y)
      x_in = attack(loss_fn, x, jax.random.fold_in(base_key, step))
    (loss, (logits, new_bs)), grads = jax.value_and_grad(loss_of, has_aux=True)(
        state["params"], state["batch_stats"], x_in, y, True)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"step": step + 1, "params": params,
                 "batch_stats": new_bs if new_bs is not None else state["batch_stats"],
                 "opt_state": opt_state}
    acc = (jnp.argmax(logits, -1) == y).mean()
    return new_state, {"train_loss": loss, "train_accuracy": acc,
                       "grad_norm": optax.tree.norm(grads)}

  @jax.jit
  def eval_step(state, x, y, w):
    """Sums over the rows with weight 1 (a ragged last batch is padded with weight 0)."""
    v = {"params": state["params"], **({"batch_stats": state["batch_stats"]} if state["batch_stats"] else {})}
    logits = model.apply(v, x)[0]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    out = {"loss_sum": (losses * w).sum(), "correct": ((jnp.argmax(logits, -1) == y) * w).sum()}
    if attack is not None and config.train.adversarial.eval_robust:
      adv = config.train.adversarial
      loss_fn = lambda z: optax.softmax_cross_entropy_with_integer_labels(model.apply(v, z)[0], y)
      step_size = adv.step_size if adv.step_size is not None else 2.5 * adv.epsilon / adv.steps
      # Evaluated with PGD from x (no random start), so the number is deterministic.
      x_adv = attacks.pgd_perturb(loss_fn, x, None, float(adv.epsilon), step_size,
                                  steps=int(adv.steps), norm=adv.norm, random_start=False,
                                  bounds=bounds if adv.clip_to_data else None)
      # x itself lies in the ball, so an example counts as robust only when both
      # the clean and the attacked input are classified correctly.
      ok = (jnp.argmax(logits, -1) == y) & (jnp.argmax(model.apply(v, x_adv)[0], -1) == y)
      out["robust_correct"] = (ok * w).sum()
    return out

  return train_step, eval_step


def permuted_labels(ds, seed: int) -> np.ndarray:
  """The labels of `ds` under one fixed random permutation (Adebayo et al.
  2018, "Sanity Checks for Saliency Maps", Sec. 4: example ``i`` gets the label
  of example ``perm[i]``), so the label marginals stay those of the data while
  any relation between image and label is gone."""
  labels = ds.labels()
  return labels[np.random.default_rng([int(seed), 0x5EED]).permutation(len(labels))]


def evaluate(eval_step, state, ds, config, labels=None, prefix="eval") -> dict[str, float]:
  """Loss, accuracy (and PGD accuracy when adversarial) on the first
  `train.eval_examples` of `ds` (all when 0), in batches of one shape; with
  `labels`, against those instead of the dataset's."""
  n = len(ds) if not config.train.eval_examples else min(len(ds), config.train.eval_examples)
  bs = config.train.batch_size
  totals: dict[str, float] = {}
  for start in range(0, n, bs):
    idx = np.arange(start, start + bs)
    w = (idx < n).astype(np.float32)
    b = ds.batch(np.minimum(idx, n - 1))
    y = b["label"] if labels is None else labels[np.minimum(idx, n - 1)]
    out = jax.device_get(eval_step(state, jnp.asarray(b["image"]), jnp.asarray(y),
                                   jnp.asarray(w)))
    for k, v in out.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  metrics = {f"{prefix}_loss": totals["loss_sum"] / n, f"{prefix}_accuracy": totals["correct"] / n}
  if "robust_correct" in totals:
    metrics[f"{prefix}_robust_accuracy"] = totals["robust_correct"] / n
  return metrics


def load_backbone(config, image_shape, num_classes: int):
  """The trained ViT of ``model.backbone_workdir`` (a train run of
  ``model.backbone``), restored under that run's own config
  (``config.train.json``), as `experiments._common.Trained`."""
  bcfg = _backbone_config(config)
  return C.load_trained(bcfg, config.model.backbone_workdir, image_shape, num_classes)


def _backbone_config(config):
  """The config of the backbone run, checked against `config`."""
  import json
  import os

  import ml_collections

  from saljax.models import prompt_cam as pc

  if set(config.train.trainable or ()) != set(pc.TRAINABLE):
    raise ValueError(f"train.trainable: Prompt-CAM trains {list(pc.TRAINABLE)} on a frozen ViT, got"
                     f" {list(config.train.trainable or ())}")
  src = config.model.backbone_workdir
  if not src:
    raise ValueError("model.backbone_workdir: expected the workdir of a train run of the ViT"
                     f" {config.model.backbone!r} (Prompt-CAM trains prompts on a frozen ViT), got None")
  path = os.path.join(src, "config.train.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"model.backbone_workdir: expected a train run with {path}; train the"
                            " ViT first (experiments/configs/prompt_cam_blockmnist.py:backbone)")
  with open(path) as fh:
    bcfg = C.check_config(ml_collections.ConfigDict(json.load(fh)))
  if bcfg.model.name != config.model.backbone:
    raise ValueError(f"model.backbone_workdir: {src} trained {bcfg.model.name!r}, expected"
                     f" model.backbone={config.model.backbone!r}")
  bcfg.explain.train_workdir = None
  bcfg.explain.checkpoint = "latest"
  return bcfg


def _with_backbone(config, state, ds) -> dict[str, Any]:
  """`state` with Prompt-CAM's backbone parameters replaced by the trained ViT's."""
  from saljax.models import prompt_cam as pc

  vit = load_backbone(config, ds.image_shape, ds.num_classes)
  params = pc.with_backbone(state["params"], jax.device_get(vit.variables["params"]))
  logging.info("Prompt-CAM: backbone %s loaded from %s (step %d); training %s only",
               config.model.backbone, config.model.backbone_workdir, vit.step, list(pc.TRAINABLE))
  return {**state, "params": params}


def run(config, workdir: str) -> dict[str, Any]:
  """Trains per `config`, checkpointing and logging under `workdir`.

  Returns ``{"state": the final train state, "metrics": last eval metrics,
  "step": last step, "preempted": bool}``.
  """
  config = C.check_config(config)
  workdir = C.check_workdir(workdir)
  # One trainer per workdir (process 0 stands for a multi-host run).
  lock = C.WorkdirLock(workdir)
  if jax.process_index() == 0:
    lock.acquire()
  try:
    return _run(config, workdir)
  finally:
    lock.release()


def _run(config, workdir: str) -> dict[str, Any]:
  tcfg = config.train
  for name in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every", "max_to_keep"):
    v = tcfg[name]
    if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "steps" else 1):
      raise ValueError(f"train.{name}: expected a positive int, got {v!r}")
  if config.model.name == "prompt_cam":
    _backbone_config(config)  # a missing or wrong backbone run is refused before any work
  ds_train = C.load_dataset(config, config.data.train_split)
  ds_eval = C.load_dataset(config, config.data.eval_split)
  if not isinstance(tcfg.permute_labels, bool):
    raise ValueError(f"train.permute_labels: expected True or False, got {tcfg.permute_labels!r}")
  labels = permuted_labels(ds_train, config.seed) if tcfg.permute_labels else None
  model = C.build_model(config, ds_train.num_classes, ds_train.image_shape)
  if model.pretrained is not None:
    raise ValueError("model.pretrained: experiments.train trains from scratch; set model.pretrained=False")
  tx = C.make_optimizer(tcfg)
  state = C.init_state(model, tx, C.init_key(config.seed), ds_train.image_shape)
  unknown = sorted(set(tcfg.trainable or ()) - set(state["params"]))
  if unknown:
    raise ValueError(f"train.trainable: {unknown} are not parameters of {model.name}; it has"
                     f" {sorted(state['params'])}")
  if model.name == "prompt_cam":
    state = _with_backbone(config, state, ds_train)
  bounds = C.input_bounds(config, ds_train.image_shape[-1])
  train_step, eval_step = make_steps(config, model, tx, bounds)

  # Data parallel over every device: the state is replicated, each batch is
  # split along its first axis (on several hosts, each process loads its rows).
  mesh = parallel.make_mesh()
  if tcfg.batch_size % mesh.size:
    raise ValueError(f"train.batch_size: expected a multiple of the {mesh.size} devices, got"
                     f" {tcfg.batch_size}")
  per_process = tcfg.batch_size // jax.process_count()
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = jax.device_put(state, replicated)
  mgr = C.checkpoint_manager(config, workdir, model, state, async_save=tcfg.async_checkpoint)
  start = 0
  if mgr.latest_step() is not None:
    start, state, _ = mgr.restore(state)
    logging.info("resumed from step %d", start)
    # A kill between the latest and the best save leaves best stale.
    mgr.repair_best(state)
  # Records past `start` (what a killed run logged after its last checkpoint)
  # are dropped: they are written again as the steps are redone.
  writer = slog.MetricWriter(workdir, name="train", resume_step=start)
  writer.write_config(config, "train")
  progress = slog.Progress(tcfg.steps, name="train", start=start,
                           every_seconds=tcfg.progress_every_s)
  metrics: dict[str, float] = {}
  preempted = False
  step = start
  with _Preemption() as preemption:
    for step in range(start, tcfg.steps):
      idx = pipelines.indices_for_step(step, tcfg.batch_size, len(ds_train), seed=config.seed)
      lo = jax.process_index() * per_process
      rows = idx[lo:lo + per_process]
      b = ds_train.batch(rows)
      y = b["label"] if labels is None else labels[rows]
      x, y = parallel.global_batch((b["image"], y), mesh)
      state, m = train_step(state, x, y)
      done = step + 1
      logged = done % tcfg.log_every == 0
      if logged:
        m = jax.device_get(m)
        writer.write(done, m)
        progress.update(done, metrics={"loss": m["train_loss"]})
      if done % tcfg.eval_every == 0 or done == tcfg.steps:
        metrics = evaluate(eval_step, state, ds_eval, config)
        if labels is not None:  # how far the permuted labels are memorized
          metrics.update(evaluate(eval_step, state, ds_train, config, labels, "permuted_train"))
        writer.write(done, metrics)
        mgr.save(done, state, metrics=metrics, force=True)
        progress.update(done, metrics=metrics, force=True)
      elif done % tcfg.checkpoint_every == 0:
        mgr.save(done, state, force=True)
      if preemption.requested or mgr.reached_preemption(done):
        if mgr.latest_step() != done:
          mgr.save(done, state, force=True)
        writer.write(done, {"preempted_at": done})
        preempted = True
        break
    else:
      step = tcfg.steps - 1
  last = step + 1 if tcfg.steps else 0
  if not preempted and tcfg.steps and mgr.latest_step() != last:
    mgr.save(last, state, force=True)
  mgr.close()
  progress.update(last, force=True)
  progress.close()
  writer.close()
  return {"state": state, "metrics": metrics, "step": last, "preempted": preempted}


if __name__ == "__main__":
  C.app_main(run)
