"""Config of `experiments.meta_evaluate` (its own schema: the binary trains its
own small model, so it shares nothing with configs/base.py).

    python -m experiments.meta_evaluate --config=experiments/configs/meta_evaluate.py \
        --workdir=runs/meta --config.meta.draws=5
"""
import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # A flax msgpack file of the CNN's variables (written by an earlier run as
  # <workdir>/model.msgpack); empty: train the model here.
  c.checkpoint = ""

  # Images of saljax.data.synthetic.segmentation labelled by the class that
  # covers the most pixels (the planted shapes' colours decide the class).
  c.data = ml_collections.ConfigDict()
  c.data.size = 16
  c.data.classes = 3          # shape classes (the CNN's outputs)
  c.data.n_train = 768
  c.data.n_eval = 32          # examples the meta-evaluation scores

  c.train = ml_collections.ConfigDict()
  c.train.features = (8, 16)
  c.train.hidden = 32
  c.train.steps = 300
  c.train.batch_size = 32
  c.train.learning_rate = 3e-3

  c.meta = ml_collections.ConfigDict()
  c.meta.metrics = ("faithfulness_correlation", "pixel_flipping", "insertion", "infidelity",
                    "sensitivity_n", "max_sensitivity", "local_lipschitz",
                    "relative_input_stability", "sparseness")
  c.meta.explainers = ("gradient", "gradient_x_input", "integrated_gradients")
  c.meta.draws = 5
  c.meta.batch_size = config_dict.placeholder(int)
  # MetaQuantus's suite: model std (multiplicative) and input half-width.
  c.meta.model_resilience = 0.001
  c.meta.model_adversary = 2.0
  c.meta.input_resilience = 0.001
  c.meta.input_adversary = 5.0
  # Per-metric options: modest sizes so one run takes minutes on a CPU.
  c.meta.options = ml_collections.ConfigDict({
      "faithfulness_correlation": {"samples": 32, "subset_size": 32},
      "pixel_flipping": {"steps": 16},
      "insertion": {"steps": 16},
      "infidelity": {"samples": 16},
      "sensitivity_n": {"samples": 16, "n_values": (4, 16, 64)},
      "max_sensitivity": {"samples": 8},
      "local_lipschitz": {"samples": 8},
      "relative_input_stability": {"samples": 8},
  })
  c.meta.explainer_options = ml_collections.ConfigDict({
      "integrated_gradients": {"steps": 16},
  })
  return c
