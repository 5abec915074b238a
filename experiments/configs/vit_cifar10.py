"""A small ViT (Dosovitskiy et al. 2021, arXiv:2010.11929) on CIFAR-10:
patch 4, 6 blocks, width 256, AdamW + cosine (a common from-scratch recipe).

Needs `tfds build cifar10 --file_format=array_record`.
"""
from experiments.configs import base
from experiments.configs.cifar10_resnet18 import CIFAR_MEAN, CIFAR_STD


def get_config():
  c = base.base()
  c.model.name = "vit_tiny"
  c.model.width = 256
  c.model.depth = 6
  c.model.patch_size = 4
  c.model.num_heads = 4
  c.data.name = "cifar10"
  c.data.mean = CIFAR_MEAN
  c.data.std = CIFAR_STD
  c.train.steps = 30000
  c.train.batch_size = 128
  c.train.optimizer = "adamw"
  c.train.learning_rate = 1e-3
  c.train.weight_decay = 0.05
  c.train.schedule = "cosine"
  c.train.warmup_steps = 1000
  c.train.eval_every = 2000
  c.train.checkpoint_every = 2000
  c.explain.methods = ("gradient", "integrated_gradients", "attention_rollout")
  return base.finish(c)
