"""Config of `experiments.visualize` (its own schema).

    python -m experiments.visualize --config=experiments/configs/visualize.py \
        --workdir=runs/visualize
    python -m experiments.visualize --config=experiments/configs/visualize.py \
        --workdir=/tmp/v --config.size=32 --config.steps=4   (a smoke run)

The defaults are sized for a CPU: Lite0 at 128 px (it is fully convolutional
and global-pooled, so it takes any size; 224 px costs 3x per step).
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = "efficientnet_lite0"
  c.size = 128
  c.steps = 96
  c.learning_rate = 0.05
  c.n_augment = 4
  # goldfish, flamingo, golden retriever, Egyptian cat, bee, balloon, strawberry, espresso
  c.classes = (1, 130, 207, 285, 309, 417, 949, 967)
  c.score = "log_softmax"     # the done-when reads softmax probabilities
  c.channel_layer = "blocks_11"
  c.channels = (0, 1, 2, 3, 4, 5, 6, 7)
  c.eval_transforms = 16      # random transformations per image for the robustness check
  c.maco_classes = (130, 285, 949, 967)
  c.maco_crops = 8
  c.maco_steps = 64
  c.facet_class = 285
  c.facets = 4
  c.facet_steps = 64
  c.facet_candidates = 96     # random crops of the bundled photos
  c.embed_layer = "Dropout_0"  # the penultimate (pooled) features
  c.fool_classes = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
  c.fool_steps = 60
  c.fool_learning_rate = 0.3
  c.evolve_generations = 400
  c.evolve_population = 64
  c.digits_steps = 300
  return c
