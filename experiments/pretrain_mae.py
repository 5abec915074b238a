"""Self-supervised pre-training of a ViT as a masked autoencoder (He et al.
2022, arXiv:2111.06377; `saljax.models.mae`), on the images of the config's
dataset without their labels: the backbone Prompt-CAM's paper setting asks
for (a ViT pre-trained on something else, then frozen; the paper uses
DINO/DINOv2/CLIP).

    python -m experiments.pretrain_mae \\
        --config=experiments/configs/prompt_cam_blockmnist.py:mae --workdir=runs/bm_mae

The ViT's sizes are ``model.*`` (``model.name`` a ViT); the optimizer,
schedule, steps and batch are ``train.*``; ``train.mask_ratio`` is the share of
patches masked (0.75, the paper's). Resumable: the MAE state is checkpointed
under ``<workdir>/mae/checkpoints`` every ``train.checkpoint_every`` steps; the
batch and the masks of step ``s`` depend only on ``(seed, s)``, so a resumed run
ends with the same parameters. Logs ``metrics.pretrain_mae.jsonl``
(``mae_loss``). At the end the encoder is written as a train run of the ViT
(``config.train.json`` and ``checkpoints/``; its classifier ``head`` stays at
its initialization: nothing trained it), so ``model.backbone_workdir`` of a
Prompt-CAM config and `experiments.train.load_backbone` read it as they read
a ViT trained with labels. The test split's masked-patch MSE (fixed masks) is
reported with that of predicting every masked pixel as the training mean.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from experiments import _common as C
from saljax import checkpoint as ckpt_lib
from saljax import logging as slog
from saljax.data import pipelines
from saljax.models import mae as mae_lib

VITS = ("vit_tiny", "vit_small", "vit_b16")


def build(config, image_shape) -> mae_lib.MAE:
  """The MAE whose encoder has the sizes of the config's ViT (as experiments._models)."""
  m = config.model
  return mae_lib.MAE(patch=int(m.patch_size), dim=int(m.width), depth=int(m.depth),
                     num_heads=int(m.num_heads), mlp_dim=4 * int(m.width))


def _check(config) -> None:
  if config.model.name not in VITS:
    raise ValueError(f"model.name: expected a ViT to pre-train ({', '.join(VITS)}), got"
                     f" {config.model.name!r}")
  if config.model.pretrained:
    raise ValueError("model.pretrained: expected False (pretrain_mae trains from scratch)")
  if tuple(config.train.trainable or ()):
    raise ValueError(f"train.trainable: expected () (MAE trains the whole ViT and decoder), got"
                     f" {tuple(config.train.trainable)}")
  if config.train.adversarial.mode != "none":
    raise ValueError("train.adversarial.mode: expected 'none' for MAE pre-training, got"
                     f" {config.train.adversarial.mode!r}")
  r = config.train.mask_ratio
  if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < float(r) < 1.0:
    raise ValueError(f"train.mask_ratio: expected a share in (0, 1), got {r!r}")
  for name in ("steps", "batch_size", "log_every", "checkpoint_every", "max_to_keep"):
    v = config.train[name]
    if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "steps" else 1):
      raise ValueError(f"train.{name}: expected a positive int, got {v!r}")


def run(config, workdir: str) -> dict[str, Any]:
  """Pre-trains per `config` under `workdir`; returns ``{"step", "metrics",
  "params"}`` (the MAE parameters) and writes the ViT train run."""
  config = C.check_config(config)
  _check(config)  # a bad config is refused before any work
  workdir = C.check_workdir(workdir)
  with C.writer_of(workdir, "pretrain_mae"):
    return _run(config, workdir)


def _run(config, workdir: str) -> dict[str, Any]:
  tcfg = config.train
  ds = C.load_dataset(config, config.data.train_split)
  shape = ds.image_shape
  module = build(config, shape)
  ratio = float(tcfg.mask_ratio)
  x0 = jnp.zeros((1, *shape), jnp.float32)
  n = (shape[0] // module.patch) * (shape[1] // module.patch)
  vis0 = jnp.zeros((1, max(1, int(round(n * (1 - ratio))))), jnp.int32)
  params = jax.jit(module.init)(C.init_key(config.seed), x0, vis0)["params"]
  tx = C.make_optimizer(tcfg)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  mgr = ckpt_lib.CheckpointManager(
      os.path.join(workdir, "mae", "checkpoints"),
      fingerprint=ckpt_lib.fingerprint(f"mae_{config.model.name}", {"params": params}),
      max_to_keep=tcfg.max_to_keep, async_save=False)
  start = 0
  if mgr.latest_step() is not None:
    start, state, _ = mgr.restore(state)
    logging.info("pretrain_mae: resumed from step %d", start)
  base_key = jax.random.key(int(config.seed))

  @jax.jit
  def step_fn(state, x):
    key = jax.random.fold_in(base_key, state["step"])  # the masks of step s: (seed, s) only
    value, grads = jax.value_and_grad(lambda p: mae_lib.loss(module, p, x, key, ratio))(
        state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state}, value

  writer = slog.MetricWriter(workdir, name="pretrain_mae", resume_step=start)
  writer.write_config(config, "pretrain_mae")
  progress = slog.Progress(tcfg.steps, name="pretrain_mae", start=start,
                           every_seconds=tcfg.progress_every_s)
  for s in range(start, tcfg.steps):
    idx = pipelines.indices_for_step(s, tcfg.batch_size, len(ds), seed=config.seed)
    state, value = step_fn(state, jnp.asarray(ds.batch(idx)["image"]))
    done = s + 1
    if done % tcfg.log_every == 0:
      value = float(value)
      writer.write(done, {"mae_loss": value})
      progress.update(done, metrics={"loss": value})
    if done % tcfg.checkpoint_every == 0 or done == tcfg.steps:
      mgr.save(done, state, force=True)
  mgr.close()
  progress.close()
  metrics = evaluate(config, module, state["params"], ds)
  writer.write(tcfg.steps, metrics)
  writer.close()
  export_vit(config, workdir, state["params"], shape, ds.num_classes, tcfg.steps)
  return {"step": int(tcfg.steps), "metrics": metrics, "params": state["params"]}


def evaluate(config, module, params, train_ds) -> dict[str, float]:
  """Masked-patch MSE on the test split (fixed masks: key ``seed + 1``), and
  the MSE of predicting the training images' mean pixel everywhere."""
  test = C.load_dataset(config, config.data.eval_split)
  n = min(len(test), 512)
  x = jnp.asarray(test.batch(np.arange(n))["image"])
  mse = float(jax.jit(lambda p, x: mae_lib.loss(module, p, x, jax.random.key(config.seed + 1),
                                                float(config.train.mask_ratio)))(params, x))
  mean = float(np.mean(train_ds.batch(np.arange(min(len(train_ds), 2048)))["image"]))
  return {"eval_mae_mse": mse, "eval_mean_pixel_mse": float(jnp.mean((x - mean) ** 2))}


def export_vit(config, workdir: str, params, image_shape, num_classes: int, step: int) -> None:
  """Writes the encoder as a train run of ``config.model.name``: its
  ``config.train.json`` and a checkpoint at `step` that `C.load_trained`
  restores (the classifier ``head`` at its initialization)."""
  model = C.build_model(config, num_classes, image_shape)
  vit_state = C.init_state(model, C.make_optimizer(config.train), C.init_key(config.seed),
                           image_shape)
  enc = mae_lib.encoder_params(params)
  want = sorted(k for k in vit_state["params"] if k != "head")
  if sorted(enc) != want:
    raise ValueError(f"pretrain_mae: the MAE encoder's parameters {sorted(enc)} do not match the"
                     f" ViT's {want}")
  vit_state["params"] = {**vit_state["params"], **jax.device_get(enc)}
  vit_state["step"] = jnp.asarray(step, jnp.int32)
  mgr = C.checkpoint_manager(config, workdir, model, vit_state, async_save=False)
  mgr.save(step, vit_state, force=True)
  mgr.close()
  C.atomic_write_text(os.path.join(workdir, "config.train.json"),
                      json.dumps(slog.config_to_dict(config), indent=2, sort_keys=True))


if __name__ == "__main__":
  C.app_main(run)
