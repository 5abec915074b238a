"""Level Set Traversal from test images of a small CNN towards images of
other classes (blind spots).

    python -m experiments.level_sets --config=experiments/configs/level_sets.py \
        --workdir=runs/level_sets [--config.lst.steps=400]

Its own schema (not configs/base.py): the model is trained as in
`experiments.robustness` (same data, model and train fields).
"""
import ml_collections

from experiments.configs import robustness


def get_config():
  c = robustness.get_config()
  del c["attack"]
  # pairs: sources are the first `pairs` test images, each with a random test
  # image of another class as its target (seeded).
  c.lst = ml_collections.ConfigDict(dict(pairs=64, steps=200, step_size=0.02, correction=1.0,
                                         segment_points=21, batch_size=64))
  # method: "newton" (saljax's correction) or "reference" (the authors' code:
  # accept a step only while the confidence fell < pthresh, plus an L-inf
  # bounded push up the confidence; their ImageNet run: step_size 0.01,
  # steps 400, pthresh 0.2, adv_step_size 3e-4). init_noise: reference only.
  c.lst.method = "newton"
  c.lst.pthresh = 0.2
  c.lst.adv_step_size = 3e-4
  c.lst.init_noise = 4 / 255
  # LPIPS-style distance to the target (saljax.blindspots.feature_distance):
  # the pretrained Lite0 at 64 px, the last output of each resolution stage
  # (LPIPS uses AlexNet's five conv stages); '' turns it off.
  c.lst.feature_model = "efficientnet_lite0"
  c.lst.feature_size = 64
  c.lst.feature_layers = ("stem", "blocks_2", "blocks_4", "blocks_10", "blocks_15")
  return c
