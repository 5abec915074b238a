"""CIFAR-10, ResNet-18 (He et al. 2016) trained from scratch with SGD + cosine,
the setup of ROAD (Rong et al. 2022) and of DiffROAR's CIFAR-10 runs.

Needs the tfds dataset prepared: `tfds build cifar10 --file_format=array_record`.
"""
from experiments.configs import base

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def get_config():
  c = base.base()
  c.model.name = "resnet18"
  c.model.width = 64
  c.data.name = "cifar10"
  c.data.mean = CIFAR_MEAN
  c.data.std = CIFAR_STD
  c.train.steps = 40000
  c.train.batch_size = 128
  c.train.optimizer = "sgd"
  c.train.learning_rate = 0.1
  c.train.momentum = 0.9
  c.train.weight_decay = 5e-4
  c.train.schedule = "cosine"
  c.train.warmup_steps = 500
  c.train.eval_every = 2000
  c.train.checkpoint_every = 2000
  c.train.eval_examples = 0
  c.explain.methods = ("gradient", "integrated_gradients", "smoothgrad", "gradcam")
  c.roar.method = "gradient"
  c.roar.fractions = (0.1, 0.3, 0.5, 0.7, 0.9)
  c.roar.retrain_steps = 20000
  return base.finish(c)
