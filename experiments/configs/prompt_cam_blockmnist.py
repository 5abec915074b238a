"""Prompt-CAM on BlockMNIST (Chowdhury et al. 2025, arXiv:2501.09333): class
prompts trained on a frozen ViT that was trained on BlockMNIST first.

    # 1. the backbone: a small ViT trained on BlockMNIST (56x28, patch 7: a 8x4 grid)
    python -m experiments.train \\
        --config=experiments/configs/prompt_cam_blockmnist.py:backbone --workdir=runs/bm_vit
    # 2. the prompts (+ the shared scorer) on that frozen ViT
    python -m experiments.train --config=experiments/configs/prompt_cam_blockmnist.py \\
        --workdir=runs/bm_pcam --config.model.backbone_workdir=runs/bm_vit

    # or the paper's setting, a backbone pre-trained without the labels (MAE):
    python -m experiments.pretrain_mae \\
        --config=experiments/configs/prompt_cam_blockmnist.py:mae --workdir=runs/bm_mae
    python -m experiments.train --config=experiments/configs/prompt_cam_blockmnist.py \\
        --workdir=runs/bm_pcam_mae --config.model.backbone_workdir=runs/bm_mae

The runs share the ViT sizes (patch 7, width 64, 4 blocks, 4 heads), so the
backbone's parameters load into Prompt-CAM by name. Measured pointing rates:
docs/prompt_cam.md.
"""
from experiments.configs import base


def get_config(arg: str = "prompts"):
  if arg not in ("prompts", "backbone", "mae"):
    raise ValueError(f"config argument: expected 'prompts', 'backbone' or 'mae', got {arg!r}")
  c = base.base()
  c.model.backbone = "vit_tiny"
  c.model.patch_size = 7          # 56x28 BlockMNIST images: an 8x4 patch grid, blocks on 4 rows each
  c.model.width = 64
  c.model.depth = 4
  c.model.num_heads = 4
  c.data.name = "blockmnist"
  c.train.batch_size = 64
  c.train.optimizer = "adamw"
  c.train.weight_decay = 0.0
  c.train.schedule = "cosine"
  c.train.eval_every = 200
  c.train.checkpoint_every = 200
  c.train.eval_examples = 0       # the whole test split (359 images)
  c.explain.num_examples = 128
  if arg == "backbone":
    c.model.name = "vit_tiny"
    c.train.steps = 800
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 50
    c.explain.methods = ("attention_rollout",)
  elif arg == "mae":
    # The paper's setting: a backbone pre-trained without the downstream labels
    # (experiments.pretrain_mae: masked autoencoding of the same images).
    c.model.name = "vit_tiny"
    c.train.steps = 3000
    c.train.learning_rate = 1.5e-3
    c.train.weight_decay = 0.05   # MAE's AdamW decay
    c.train.warmup_steps = 100
    c.train.checkpoint_every = 500
    c.train.best_metric = ""      # no labels, no accuracy to keep the best by
    c.explain.methods = ("attention_rollout",)
  else:
    c.model.name = "prompt_cam"
    c.model.variant = "deep"      # the paper's main variant
    c.train.trainable = ("prompts", "prompt_head")  # the ViT stays frozen
    c.train.steps = 600
    c.train.learning_rate = 3e-3  # prompts only: a larger rate, as prompt tuning usually takes
    c.train.warmup_steps = 50
    c.explain.methods = ("prompt_cam",)
  return base.finish(c)
