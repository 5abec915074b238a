"""Feature-guided black-box safety testing on a digits CNN (experiments/safety_test.py).

    python -m experiments.safety_test --config=experiments/configs/safety_test.py \
        --workdir=runs/safety [--config.search.max_queries=2000]

Its own schema (not configs/base.py): the binary trains its own small CNN on
scikit-learn's 8x8 digits and reads only these fields.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  # The CNN of experiments.safety_test.train_digits_cnn: full-batch Adam on
  # the first `n_train` digits; the rest are the test images.
  c.train = ml_collections.ConfigDict(dict(n_train=1400, steps=300, learning_rate=1e-2))
  c.n_images = 100  # test images searched (the first of the held-out digits)
  # Both searches get the same budget and manipulations (saljax.safety).
  # manipulation / backtrack: saljax's defaults ("tau", False); the authors'
  # SafeCV rules are "extreme" and True (docs/safety.md).
  c.search = ml_collections.ConfigDict(dict(max_queries=1000, max_pixels=16, tau=1.0,
                                            manipulation="tau", backtrack=False))
  # saljax.safety.sift_saliency: uniform floor (0: the paper's mixture alone);
  # the authors' Gaussians are scale_factor=2, scale_add=1, mixture=True.
  c.sift = ml_collections.ConfigDict(dict(uniform=0.0, scale_factor=1.0, scale_add=0.0, mixture=False))
  # reward: "shaped" (saljax) or "probability" (the authors' MCTS).
  c.mcts = ml_collections.ConfigDict(dict(expansions=16, playouts=1, exploration=0.1, reward="shaped"))
  c.random = ml_collections.ConfigDict(dict(playouts=8))
  c.examples = 6  # rows of the PNG
  return c
