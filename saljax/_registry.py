"""A name -> function registry, one instance for explainers and one for metrics."""
from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  fn: Callable
  kind: str            # explainers: "pixel" or "layer"; metrics: the family
  stochastic: bool     # takes a `key`


class Registry:

  def __init__(self, what: str):
    self._what = what
    self._entries: dict[str, Entry] = {}

  def register(self, name: str, *, kind: str, stochastic: bool = False):
    """Decorator: registers `fn` under `name`."""
    def deco(fn):
      if name in self._entries and self._entries[name].fn is not fn:
        raise ValueError(f"{self._what} {name!r} is registered twice")
      self._entries[name] = Entry(name, fn, kind, stochastic)
      return fn
    return deco

  def names(self, kind: str | None = None) -> list[str]:
    return sorted(n for n, e in self._entries.items() if kind is None or e.kind == kind)

  def entry(self, name: str) -> Entry:
    if name not in self._entries:
      raise KeyError(f"unknown {self._what} {name!r}; known: {self.names()}")
    return self._entries[name]

  def get(self, name: str) -> Callable:
    return self.entry(name).fn
