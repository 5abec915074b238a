"""The schema every experiment config follows, with defaults.

Each config file calls `base()` and overrides what it needs, then locks the
result, so a misspelt override (``--config.train.stepz=5``) fails with
"Did you mean 'steps'" before any work. `experiments._common.check_config`
checks a config built by hand against this schema too.
"""
import ml_collections
from ml_collections import config_dict

placeholder = config_dict.placeholder


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"            # see experiments/_models.py: mlp, cnn, resnet18, vit_tiny, efficientnet_lite0
  c.model.pretrained = False      # load_pretrained(name) instead of training from scratch
  c.model.width = 256             # mlp hidden width / cnn and resnet base width / vit embedding
  c.model.depth = 2               # mlp hidden layers / vit blocks
  c.model.patch_size = 4          # vit
  c.model.num_heads = 4           # vit
  c.model.variant = "deep"        # prompt_cam: "deep" (prompts into every block) or "shallow"
  c.model.backbone = "vit_tiny"   # prompt_cam: the ViT (by name and the sizes above) it reuses, frozen
  c.model.backbone_workdir = placeholder(str)  # prompt_cam: the train run of that ViT (loaded at step 0)

  c.data = ml_collections.ConfigDict()
  c.data.name = "blockmnist"      # saljax.data.pipelines.load names, or "photos" (bundled photos)
  c.data.data_dir = placeholder(str)
  c.data.image_size = placeholder(tuple)
  c.data.mean = (0.0,)            # per channel (one value: all channels)
  c.data.std = (1.0,)
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.seed = 0                 # BlockMNIST placement seed
  c.data.keep_difficult = True    # VOC: keep boxes marked "difficult" (False drops them, as VOC's evaluation)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 64
  c.train.optimizer = "adam"      # adam, sgd, adamw
  c.train.learning_rate = 1e-3
  c.train.momentum = 0.9          # sgd
  c.train.weight_decay = 0.0
  c.train.schedule = "constant"   # constant, cosine
  c.train.warmup_steps = 0
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.eval_examples = 512     # 0: the whole eval split
  c.train.checkpoint_every = 250
  c.train.max_to_keep = 3
  c.train.best_metric = "eval_accuracy"
  c.train.async_checkpoint = True
  c.train.progress_every_s = 10.0
  c.train.trainable = ()          # top-level parameter names to train, the rest frozen (empty: all)
  c.train.mask_ratio = 0.75       # pretrain_mae: share of patches masked (He et al. 2022)
  c.train.permute_labels = False  # train on a fixed random permutation of the labels (Adebayo et al. 2018 Sec. 4)
  c.train.adversarial = ml_collections.ConfigDict()
  c.train.adversarial.mode = "none"   # none, fgsm, pgd
  c.train.adversarial.norm = "linf"   # linf, l2
  c.train.adversarial.epsilon = 0.1   # in the model's input space (after normalization)
  c.train.adversarial.step_size = placeholder(float)  # default 2.5 * epsilon / steps
  c.train.adversarial.steps = 7
  c.train.adversarial.random_start = True
  c.train.adversarial.clip_to_data = True  # clip to the image range [0, 1] mapped through mean/std
  c.train.adversarial.eval_robust = True   # also report PGD accuracy at eval time

  c.explain = ml_collections.ConfigDict()
  c.explain.methods = ("gradient", "integrated_gradients")
  c.explain.split = "test"
  c.explain.num_examples = 64
  c.explain.chunk_size = 16       # examples per stored chunk (and per explainer call)
  c.explain.target = "label"      # label or predicted
  c.explain.checkpoint = "latest" # latest, best, or a workdir of a train run
  c.explain.train_workdir = placeholder(str)  # where the trained model lives (default: the workdir)
  c.explain.options = ml_collections.ConfigDict()  # per-method keyword options: {"integrated_gradients": {"steps": 32}}
  c.explain.layer = placeholder(str)  # layer for layer methods (default: the model's default layer)
  c.explain.overlays = 4          # PNG overlays of the first N examples per method

  c.evaluate = ml_collections.ConfigDict()
  c.evaluate.metrics = ("deletion", "insertion")
  c.evaluate.maps_dir = placeholder(str)  # default <workdir>/maps
  c.evaluate.options = ml_collections.ConfigDict()  # per-metric keyword options

  c.sanity = ml_collections.ConfigDict()
  c.sanity.methods = ("gradient",)
  c.sanity.test = "model"         # model: parameter randomization; data: against sanity.random_labels_workdir
  c.sanity.random_labels_workdir = placeholder(str)  # a train run with train.permute_labels=True
  c.sanity.mode = "cascading"     # cascading, independent
  c.sanity.num_examples = 16
  c.sanity.init_std = 0.01
  c.sanity.similarities = ("spearman_abs", "spearman", "ssim")  # of sum_c|e|, of sum_c e, SSIM        # truncated-normal re-init std (Adebayo et al. App. B, MNIST CNN)

  c.roar = ml_collections.ConfigDict()
  c.roar.method = "gradient"
  c.roar.fractions = (0.1, 0.3, 0.5)  # k: share of coordinates KEPT (unmasked)
  c.roar.retrain_steps = 500
  c.roar.seeds = (0,)
  c.roar.fill = 0.0               # value of masked coordinates (model input space)
  c.roar.attribution_batch = 256
  return c


def finish(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks `c`: overriding an unknown field is then an error. The per-method
  option dicts stay open (their keys are the methods' own keyword options,
  checked by the methods themselves)."""
  c.lock()
  c.explain.options.unlock()
  c.evaluate.options.unlock()
  return c
