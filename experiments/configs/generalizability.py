"""MeGe and ReCo of k CNNs trained on k folds of the planted-shapes images.

    python -m experiments.generalizability --config=experiments/configs/generalizability.py \
        --workdir=runs/mege --config.methods='("gradient","integrated_gradients")'

Its own schema (not configs/base.py): the binary trains its own small models
with `saljax.models.quick`'s trainer and reads only these fields.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  # saljax.data.synthetic.segmentation with one shape per image; the label is
  # the shape's class (its colour), so a right explanation covers the shape.
  c.data = ml_collections.ConfigDict(dict(n_train=512, n_test=96, size=24, num_classes=3,
                                          noise=0.15))
  c.model = ml_collections.ConfigDict(dict(features=(8, 16), hidden=32))
  # k models, model i trained on every fold but fold i (Fel et al. 2022 use 4 to 6).
  c.train = ml_collections.ConfigDict(dict(k=4, steps=200, batch_size=32, learning_rate=3e-3))
  # Explainers by registry name ("random": standard normal maps, a baseline), each
  # explaining the true label on the held-out test set; options per method.
  c.methods = ("gradient", "integrated_gradients", "random")
  c.options = ml_collections.ConfigDict({"integrated_gradients": {"steps": 16}})
  # Compare |map| (magnitudes): MeGe averages the channels of a map, and the
  # signed gradients of the colour channels cancel there.
  c.absolute = True
  c.convention = "paper"  # ReCo's thresholds: "paper" or "xplique"
  return c
