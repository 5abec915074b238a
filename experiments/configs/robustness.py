"""Accuracy under FGSM / PGD (Linf, L2) / Carlini-Wagner L2 of a small CNN
trained on the planted-shapes images.

    python -m experiments.robustness --config=experiments/configs/robustness.py \
        --workdir=runs/robustness [--config.attack.cw_iterations=500]

Its own schema (not configs/base.py): the binary trains its own small model
with `saljax.models.quick`'s trainer and reads only these fields.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  # saljax.data.synthetic.segmentation with one shape per image, labelled by
  # the shape's class (its colour): learnt in seconds, pixels in [0, 1].
  c.data = ml_collections.ConfigDict(dict(n_train=1024, n_test=128, size=16, num_classes=4,
                                          noise=0.15))
  c.model = ml_collections.ConfigDict(dict(features=(8, 16), hidden=32))
  c.train = ml_collections.ConfigDict(dict(steps=300, batch_size=32, learning_rate=3e-3))
  c.attack = ml_collections.ConfigDict(dict(
      # Budgets per norm; pixels are in [0, 1] (8/255 ~ 0.031 is the CIFAR convention).
      linf_budgets=(0.0, 0.01, 0.02, 0.04, 0.08),
      l2_budgets=(0.0, 0.1, 0.25, 0.5, 1.0),
      pgd_steps=20,
      # C&W: the reference code's 9 restarts; 200 Adam steps each (docs/robustness.md).
      cw_search_steps=9, cw_iterations=200,
      # The closest of targeted runs towards every other class (saljax.attacks.cw_l2's
      # all_targets): plain untargeted f6 stays with the class nearest at the start.
      cw_all_targets=True,
      batch_size=64))
  return c
