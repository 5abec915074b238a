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
  assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_your_own_model.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
  text = _run(path, tmp_path)
  if path.stem == "01_quickstart":
    assert "chelsea: Egyptian cat" in text, text
    assert "coffee: espresso" in text, text
  else:
    line = next(l for l in text.splitlines() if l.startswith("max |IG - x*w|"))
    assert float(line.split("=")[1]) < 1e-5, line
    acc = next(l for l in text.splitlines() if "training accuracy" in l)
    assert float(acc.split()[-1]) > 0.8, acc
    # The sanity check the notebook shows: a randomized model changes the gradient map.
    grad = next(l for l in text.splitlines() if l.startswith("gradient: rank correlation"))
    assert float(grad.rstrip("]").split()[-1]) < 0.5, grad
