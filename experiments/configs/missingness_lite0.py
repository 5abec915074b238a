"""Missingness bias under random patch removal: the pretrained EfficientNet-Lite0
on the six bundled real photos (nothing trained).

    python -m experiments.missingness --config=experiments/configs/missingness_lite0.py \
        --workdir=runs/missingness_lite0 [--config.draws=4]

Its own schema (read only by experiments/missingness.py's photo setting,
chosen by the `model` field).
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = "efficientnet_lite0"  # saljax.models.load_pretrained name; input 224x224
  c.photos = ()  # a subset of saljax.data.bundled_photos.NAMES; empty: all six
  # The removal grid: cells of 16 px, so 14x14 = 196 cells on the 224 px crop
  # (the ViT-B/16 patch grid of Jain et al. 2022).
  c.cell = 16
  c.fractions = (0.125, 0.25, 0.5, 0.75)
  c.draws = 16  # random masks per photo and fraction
  # "constant": 0 after the (x - 127) / 128 normalization (a grey image);
  # "mean": the photo's mean colour; "blur": the photo blurred with blur_sigma
  # (10 px, removed_logits' default); "layer_mask": Lite0's layer-masked forward.
  c.removals = ("constant", "mean", "blur", "layer_mask")
  c.blur_sigma = 10.0
  c.batch_size = 32  # masked images per model call
  return c
