"""BlockMNIST, L2 PGD adversarial training of the same MLP (Shah et al. 2021:
robust models' input gradients highlight the signal block).

The epsilon is saljax's choice (the paper's BlockMNIST budgets were not
available, see shared/references/evaluation_protocols.md 1.3): 2.0 in L2 on
[0, 1] pixels of a 56x28 image, 7 steps, step 2.5*eps/steps, random start.
"""
from experiments.configs import base
from experiments.configs import blockmnist_standard


def get_config():
  c = blockmnist_standard.get_config()
  c.unlock()
  c.train.adversarial.mode = "pgd"
  c.train.adversarial.norm = "l2"
  c.train.adversarial.epsilon = 2.0
  c.train.adversarial.steps = 7
  return base.finish(c)
