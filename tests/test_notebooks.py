"""The notebooks in colab/ run top to bottom in a fresh kernel, and say what
they claim (a stale notebook is a broken one)."""
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

COLAB = pathlib.Path(__file__).resolve().parents[1] / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))


def _run(path, tmp_path):
  nb = nbformat.read(path, as_version=4)
  # The kernel inherits this process's environment: the suite's weight cache
  # and one CPU device.
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")


def test_there_are_notebooks():
  assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_your_own_model.ipynb",
                                         "03_attribution_prior.ipynb", "04_beyond_images.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
  text = _run(path, tmp_path)
  if path.stem == "01_quickstart":
    assert "chelsea: Egyptian cat" in text, text
    assert "coffee: espresso" in text, text
  elif path.stem == "03_attribution_prior":
    # Erion et al. 2021: the total-variation prior smooths the maps at about
    # the same accuracy.
    num = lambda prefix: float(next(l for l in text.splitlines() if l.startswith(prefix)).split()[-1])
    tv0, tv1 = num("total variation without prior"), num("total variation with prior")
    acc0, acc1 = num("without prior: accuracy"), num("with prior: accuracy")
    assert tv1 < tv0 / 2, text
    assert acc0 > 0.9 and acc1 > acc0 - 0.03, text
  elif path.stem == "04_beyond_images":
    line = lambda prefix: next(l for l in text.splitlines() if l.startswith(prefix))
    # Segmentation: IG of a region's score sits in the region, and is complete.
    inside = float(line("segmentation: IG mass inside").split()[6])
    assert inside > 0.6, text
    assert float(line("segmentation: max |completeness gap|").split()[-1]) < 0.01, text
    # Text: layer IG at the embeddings finds the trigger tokens.
    assert float(line("text: the top token is a trigger").split()[-4]) >= 0.95, text
    # Table: KernelSHAP's values sum to f(x) - f(0) for both classes, and agree with IG.
    assert float(line("tabular: KernelSHAP efficiency gap").split()[-1]) < 1e-4, text
    assert float(line("tabular: KernelSHAP vs integrated gradients").split()[-1]) > 0.9, text
  else:
    line = next(l for l in text.splitlines() if l.startswith("max |IG - x*w|"))
    assert float(line.split("=")[1]) < 1e-5, line
    acc = next(l for l in text.splitlines() if "training accuracy" in l)
    assert float(acc.split()[-1]) > 0.8, acc
    # The sanity check the notebook shows: a randomized model changes the gradient map.
    grad = next(l for l in text.splitlines() if l.startswith("gradient: rank correlation"))
    assert float(grad.rstrip("]").split()[-1]) < 0.5, grad
