"""BlockMNIST, standard training of an MLP (Shah et al. 2021, arXiv:2102.12781).

    python -m experiments.train --config=experiments/configs/blockmnist_standard.py --workdir=runs/bm_std
"""
from experiments.configs import base


def get_config():
  c = base.base()
  c.model.name = "mlp"
  c.model.width = 256
  c.model.depth = 2
  c.data.name = "blockmnist"
  c.train.steps = 2000
  c.train.batch_size = 64
  c.train.learning_rate = 1e-3
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.explain.methods = ("gradient", "smoothgrad", "integrated_gradients")
  c.explain.num_examples = 128
  c.evaluate.metrics = ("deletion", "insertion")
  return base.finish(c)
