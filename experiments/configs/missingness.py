"""Missingness bias under random patch removal: a ViT and a CNN trained here.

    python -m experiments.missingness --config=experiments/configs/missingness.py \
        --workdir=runs/missingness [--config.draws=4]

Its own schema (not configs/base.py): the binary trains its own small models
with `saljax.models.quick`'s trainer and reads only these fields.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  # saljax.data.synthetic.segmentation with one shape per image on grey noise;
  # the label is the shape's class (its colour). Black (0) never occurs in
  # training, so a black patch is the out-of-distribution signal the
  # missingness-bias papers describe.
  c.data = ml_collections.ConfigDict(dict(n_train=1024, n_test=256, size=16, num_classes=4,
                                          noise=0.15))
  # patch: the ViT's patch and the removal grid's cell (both models see the
  # same removed cells).
  c.vit = ml_collections.ConfigDict(dict(patch=4, dim=32, depth=2, num_heads=2, mlp_dim=64))
  c.cnn = ml_collections.ConfigDict(dict(features=(16, 32), hidden=32))
  c.train = ml_collections.ConfigDict(dict(steps=400, batch_size=32, learning_rate=3e-3))
  # Fractions of the grid's cells removed at random, and random masks per
  # test image and fraction.
  c.fractions = (0.125, 0.25, 0.5, 0.75)
  c.draws = 8
  # Strategies compared on both models; the model strategy of each
  # architecture (token_drop for the ViT, layer_mask for the CNN) is added.
  c.pixel_removals = ("constant", "mean")
  c.batch_size = 512  # masked images per model call
  return c
