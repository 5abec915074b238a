"""Pointing game of Prompt-CAM against attention maps of its frozen ViT on
BlockMNIST's held-out images: the share of maps whose maximum lies in the
digit (signal) block, chance 0.5 (half the digits are on top).

    python -m experiments.prompt_cam_pointing \\
        --config=experiments/configs/prompt_cam_blockmnist.py \\
        --config.model.backbone_workdir=runs/bm_vit --workdir=runs/bm_pcam

Reads the Prompt-CAM run of `workdir` (experiments.train with the same
config) and its backbone run (a ViT trained on the labels, experiments.train, or one
pre-trained without them, experiments.pretrain_mae: the paper's setting); writes ``prompt_cam_pointing.json`` (rates,
accuracies, counts) and ``prompt_cam_pointing.png`` (a few test images with
the maps) into `workdir`. Maps compared, all on the patch grid:

* ``prompt_cam``: the target (label) prompt's last-block attention, mean over
  heads (`saljax.explainers.prompt_cam`), and ``prompt_cam_best_head``: each
  head alone, the best head's rate (an upper bound: the head is picked on
  the test set);
* ``prompt_cam_greedy_top1`` / ``_top2``: the mean of the 1 / 2 most
  important heads of each image by the paper's greedy head blurring
  (``heads="greedy"``, `saljax.explainers.prompts.rank_heads`), picked per
  image from the model's own scores, not from the pointing;
* ``attention_rollout`` (Abnar and Zuidema 2020) and the class token's
  last-block attention (``class_token_attention``) of the frozen ViT.

The public rollout and class-token functions read square patch grids only
(`saljax.explainers.cam.token_grid`); BlockMNIST's 2:1 images have a 2:1
grid, so their jitted cores are called with that grid here.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _common as C
from experiments import train
from saljax.data import blockmnist


def pointing(maps, signal_top) -> np.ndarray:
  """Per example: whether the maximum of ``[B, h, w]`` lies in the signal block's rows."""
  maps = np.asarray(maps)
  rows = np.argmax(maps.reshape(len(maps), -1), axis=1) // maps.shape[2]
  return (rows < maps.shape[1] // 2) == np.asarray(signal_top)


def _baselines(f, x, grid, batch: int):
  from saljax.explainers import attention
  names = tuple(n for n in f.layer_names if n.endswith("attn/probs"))
  roll, cls = [], []
  for s in range(0, len(x), batch):  # host loop over fixed-size chunks: one compile
    xb = x[s:s + batch]
    roll.append(attention._rollout(f, xb, names, grid, "mean", jnp.float32(0.0), 0))
    q = jnp.zeros((len(xb),), jnp.int32)
    cls.append(attention._token_attention(f, xb, q, names[-1], grid, False))
  return np.concatenate(roll), np.concatenate(cls)


def run(config, workdir: str) -> dict[str, Any]:
  import saljax
  config = C.check_config(config)
  if config.model.name != "prompt_cam":
    raise ValueError(f"model.name: expected 'prompt_cam', got {config.model.name!r}")
  workdir = C.check_workdir(workdir)
  ds = C.load_dataset(config, "test")
  size = ds.image_shape[1]
  test = blockmnist.load("test", seed=config.data.seed, size=size)
  x, y = test["image"], test["label"]
  pcam = C.load_trained(config, workdir, ds.image_shape, ds.num_classes)
  vit = train.load_backbone(config, ds.image_shape, ds.num_classes)
  batch = 64
  n = (len(x) // batch) * batch + (batch if len(x) % batch else 0)
  xp = np.concatenate([x, np.repeat(x[-1:], n - len(x), 0)])  # one shape: one compile
  yp = np.concatenate([y, np.repeat(y[-1:], n - len(y), 0)])
  heads, greedy, logits = [], [], []
  for s in range(0, n, batch):
    xb, yb = jnp.asarray(xp[s:s + batch]), jnp.asarray(yp[s:s + batch])
    heads.append(np.asarray(saljax.prompt_cam(pcam.tapped, xb, yb, per_head=True)))
    # The top 2 by the greedy ranking, most important first: top-1 is its first.
    greedy.append(np.asarray(saljax.prompt_cam(pcam.tapped, xb, yb, heads="greedy", top_k=2,
                                               per_head=True)))
    logits.append(np.asarray(pcam.f(xb)))
  heads = np.concatenate(heads)[:len(x)]                  # [N, heads, h, w]
  greedy = np.concatenate(greedy)[:len(x)]                # [N, 2, h, w]
  acc = float((np.concatenate(logits)[:len(x)].argmax(-1) == y).mean())
  grid = heads.shape[2:] + (1,)
  roll, cls = _baselines(vit.tapped, jnp.asarray(xp), grid, batch)
  roll, cls = roll[:len(x)], cls[:len(x)]
  # An MAE backbone's classifier head was never trained: no accuracy to report.
  mae = os.path.exists(os.path.join(config.model.backbone_workdir, "config.pretrain_mae.json"))
  vit_acc = None if mae else float((np.asarray(vit.f(jnp.asarray(x))).argmax(-1) == y).mean())
  top = test["signal_top"]
  per_head = [float(pointing(heads[:, h], top).mean()) for h in range(heads.shape[1])]
  rates = {
      "prompt_cam": float(pointing(heads.mean(1), top).mean()),
      "prompt_cam_best_head": max(per_head),
      "prompt_cam_per_head": per_head,
      "prompt_cam_greedy_top1": float(pointing(greedy[:, 0], top).mean()),
      "prompt_cam_greedy_top2": float(pointing(greedy.mean(1), top).mean()),
      "attention_rollout": float(pointing(roll, top).mean()),
      "class_token_attention": float(pointing(cls, top).mean()),
  }
  out = {"pointing": rates, "prompt_cam_accuracy": acc, "vit_accuracy": vit_acc,
         "examples": int(len(x)), "grid": list(heads.shape[2:]), "variant": config.model.variant,
         "prompt_steps": int(pcam.step), "vit_steps": int(vit.step),
         "backbone": "mae" if mae else "supervised",
         "backbone_workdir": os.path.abspath(config.model.backbone_workdir)}
  C.atomic_write_text(os.path.join(workdir, "prompt_cam_pointing.json"),
                      json.dumps(out, indent=2, sort_keys=True))
  _figure(os.path.join(workdir, "prompt_cam_pointing.png"), x[:6], y[:6], heads[:6].mean(1),
          greedy[:6, 0], roll[:6], cls[:6], rates, config.model.variant, out["backbone"])
  return out


def _figure(path, x, y, pcam, greedy, roll, cls, rates, variant, backbone):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = [("image", None), ("Prompt-CAM", pcam), ("greedy top-1 head", greedy), ("rollout", roll),
          ("class-token attn", cls)]
  fig, axes = plt.subplots(len(rows), len(x), figsize=(1.3 * len(x), 2.4 * len(rows)))
  for j in range(len(x)):
    img = x[j, ..., 0]
    for i, (name, maps) in enumerate(rows):
      ax = axes[i, j]
      ax.imshow(img, cmap="gray", vmin=0, vmax=1)
      if maps is not None:
        m = np.kron(maps[j], np.ones((img.shape[0] // maps.shape[1], img.shape[1] // maps.shape[2])))
        ax.imshow(m, cmap="jet", alpha=0.5)
      ax.set_xticks([]); ax.set_yticks([])
      if j == 0:
        label = name if maps is None else f"{name}\npointing {rates[_KEY[name]]:.2f}"
        ax.set_ylabel(label, fontsize=8)
      if i == 0:
        ax.set_title(f"label {int(y[j])}", fontsize=8)
  fig.suptitle(f"Prompt-CAM ({variant}) vs the frozen ViT's attention\n({backbone} backbone,"
               " held-out BlockMNIST)", fontsize=9)
  fig.tight_layout()
  C.atomic_write(path, lambda p: fig.savefig(p, dpi=100, format="png"))
  plt.close(fig)


_KEY = {"Prompt-CAM": "prompt_cam", "greedy top-1 head": "prompt_cam_greedy_top1",
        "rollout": "attention_rollout",
        "class-token attn": "class_token_attention"}


if __name__ == "__main__":
  C.app_main(run)
