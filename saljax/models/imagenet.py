"""ImageNet-1k class names, in the usual index order (0 tench ... 999 toilet tissue).

The names ship in ``imagenet_classes.txt`` (one per line), taken from
tensorflow-datasets (Apache-2.0, ``datasets/siscore/labels.py``), which lists
the standard 1000 ILSVRC-2012 class names in the index order that ImageNet
classifiers use.
"""
from __future__ import annotations

import functools
import importlib.resources


@functools.lru_cache(maxsize=1)
def _names() -> tuple[str, ...]:
  text = importlib.resources.files("saljax.models").joinpath("imagenet_classes.txt").read_text("utf-8")
  names = tuple(line for line in text.splitlines() if line)
  if len(names) != 1000:
    raise ValueError(f"imagenet_classes.txt: expected 1000 names, got {len(names)}")
  return names


def imagenet_classes() -> list[str]:
  """The 1000 ImageNet class names; index ``i`` is class ``i`` (285: Egyptian cat)."""
  return list(_names())
