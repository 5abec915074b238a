"""The public names: literal `__all__` lists in saljax, saljax.explainers and
saljax.metrics that match the registry, and each method reachable from the
module named after its README family."""
import ast
import importlib
import pathlib

import pytest

import saljax

ROOT = pathlib.Path(saljax.__file__).parent
# A module named `complexity` would be hidden by the metric of that name.
MODULE_OF_FAMILY = {"complexity": "simplicity"}


def _literal_all(path):
  tree = ast.parse(path.read_text())
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
      return ast.literal_eval(node.value)  # raises unless a literal list
  raise AssertionError(f"{path}: no __all__")


@pytest.mark.parametrize("pkg,path", [
    (saljax, ROOT / "__init__.py"),
    (saljax.explainers, ROOT / "explainers" / "__init__.py"),
    (saljax.metrics, ROOT / "metrics" / "__init__.py"),
])
def test_all_is_literal_and_resolves(pkg, path):
  names = _literal_all(path)
  assert names == pkg.__all__
  assert len(set(names)) == len(names), "duplicates in __all__"
  missing = [n for n in names if not hasattr(pkg, n)]
  assert not missing, missing


@pytest.mark.parametrize("pkg,reg", [(saljax.explainers, saljax.explainers),
                                     (saljax.metrics, saljax.metrics)])
def test_all_lists_every_registered_method_as_the_registry_has_it(pkg, reg):
  for n in reg.names():
    assert n in pkg.__all__, n
    assert getattr(pkg, n) is reg.get(n), n
  for n in saljax.explainers.names():
    assert n in saljax.__all__ and getattr(saljax, n) is saljax.explainers.get(n), n


@pytest.mark.parametrize("which", ["explainers", "metrics"])
def test_each_method_lives_in_its_family_module(which):
  reg = getattr(saljax, which)
  for n in reg.names():
    fam = reg.entry(n).family
    mod = importlib.import_module(f"saljax.{which}.{MODULE_OF_FAMILY.get(fam, fam)}")
    assert getattr(mod, n, None) is reg.get(n), f"{n}: not in saljax.{which}.{fam}"


# One name per idea across every registered method (docs/models.md, "Vocabulary").
SYNONYMS = {"output": "score", "layers": "layer", "return_gap": "return_delta",
            "num_samples": "samples", "n_steps": "steps", "baselines": "baseline"}


@pytest.mark.parametrize("which", ["explainers", "metrics"])
def test_one_vocabulary_for_keyword_arguments(which):
  import inspect
  reg = getattr(saljax, which)
  bad = []
  for n in reg.names():
    params = inspect.signature(reg.get(n)).parameters
    bad += [f"{n}({p}=): call it {SYNONYMS[p]}=" for p in params if p in SYNONYMS]
  assert not bad, bad


def test_score_option_means_the_same_everywhere():
  """Every `score=` accepts the logit/probability pair, so a metric handed an
  explainer's option (or the other way round) means the same number."""
  import inspect
  for reg in (saljax.explainers, saljax.metrics):
    for n in reg.names():
      p = inspect.signature(reg.get(n)).parameters.get("score")
      if p is not None:
        assert p.default in saljax.model.SCORES + ("logit_softmax", "accuracy"), (n, p.default)
