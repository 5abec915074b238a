"""CRAFT-style concepts of one class of the pretrained EfficientNet-Lite0 on the bundled photos.

    python -m experiments.concepts --config=experiments/configs/concepts_lite0.py \
        --workdir=runs/concepts

Its own schema (read only by experiments/concepts.py).
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = "efficientnet_lite0"
  # Photos whose random crops the concepts are learned from (saljax.data.bundled_photos),
  # and the class explained (ImageNet 285 "Egyptian cat", Lite0's top class on chelsea).
  c.photos = ("chelsea",)
  c.target = 285
  # The tapped layer: "head" is Lite0's last conv + ReLU6 (7x7x1280), non-negative for NMF.
  c.layer = "head"
  # CRAFT: random crops (a fraction of the shorter side) resized to the input size.
  c.crops = 96
  c.crop_size = 0.35
  c.method = "nmf"
  c.concepts = 8
  c.fit = ml_collections.ConfigDict(dict(epochs=100, batch_size=32, code_steps=150))
  c.errors_for = (2, 4, 8, 16)  # reconstruction error against the number of concepts
  # Importance on this many crops (Sobol: designs (k + 2) evaluations of the layer's head each).
  c.importance_crops = 24
  c.designs = 32
  c.top_crops = 6  # crops shown per concept
  return c
