"""experiments.explain as two processes joined by jax.distributed on the
loopback address (CPU collectives): each reads half of every chunk, process 0
writes, and the stored maps equal a single-process run's."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from experiments import explain, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METHODS = ("gradient", "smoothgrad", "integrated_gradients")  # test_explain_evaluate.tiny()


def _config_file(tmp_path, train_workdir):
  """A config file (for the subprocesses) of test_explain_evaluate's tiny setup:
  3 methods, 10 examples in chunks of 4 (a ragged last chunk)."""
  path = tmp_path / "tiny_config.py"
  path.write_text(textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
      from test_explain_evaluate import tiny

      def get_config():
        c = tiny()
        c.explain.train_workdir = {train_workdir!r}
        return c
      """))
  return str(path)


def _load_config(path):
  import importlib.util
  spec = importlib.util.spec_from_file_location("tiny_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(config_path, workdir):
  """Runs experiments.explain as processes 0 and 1 of one run; returns (codes, stderrs)."""
  address = f"127.0.0.1:{_free_port()}"
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  procs = [subprocess.Popen(
      [sys.executable, "-m", "experiments.explain", f"--config={config_path}",
       f"--workdir={workdir}", f"--coordinator_address={address}", "--num_processes=2",
       f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  errs = [p.communicate(timeout=600)[1] for p in procs]
  return [p.returncode for p in procs], errs


def _two_processes(config_path, workdir):
  codes, errs = _launch(config_path, workdir)
  for code, err in zip(codes, errs):
    assert code == 0, err[-4000:]
  return errs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multiprocess")
  trained = str(tmp / "trained")
  config_path = _config_file(tmp, trained)
  config = _load_config(config_path)
  train.run(config, trained)
  single = str(tmp / "single")
  explain.run(config, single)
  return tmp, config_path, single


def _assert_same_maps(a, b):
  for what in (None, *METHODS):
    x = explain.load_maps(os.path.join(a, "maps"), what)
    y = explain.load_maps(os.path.join(b, "maps"), what)
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_allclose(x[k], y[k], atol=1e-6, err_msg=f"{what}/{k}")


def test_two_processes_store_the_single_process_maps(setup):
  tmp, config_path, single = setup
  multi = str(tmp / "multi")
  logs = _two_processes(config_path, multi)
  assert all("process" in e and "of 2" in e for e in logs)  # both joined one run
  _assert_same_maps(single, multi)
  manifest = json.load(open(os.path.join(multi, "maps", "manifest.json")))
  assert manifest == json.load(open(os.path.join(single, "maps", "manifest.json")))
  assert manifest["num_chunks"] == 3
  # Resuming: a lost chunk is recomputed by both processes, the rest are skipped.
  lost = explain.chunk_path(os.path.join(multi, "maps"), "smoothgrad", 1)
  os.remove(lost)
  _two_processes(config_path, multi)
  assert os.path.exists(lost)
  _assert_same_maps(single, multi)


def test_chunk_size_must_split_over_the_devices(setup, tmp_path):
  tmp, config_path, _ = setup
  bad = tmp_path / "bad_config.py"
  bad.write_text(open(config_path).read().replace("return c", "c.explain.chunk_size = 3\n  return c"))
  codes, errs = _launch(str(bad), str(tmp_path / "out"))
  assert all(code != 0 for code in codes)
  assert any("explain.chunk_size: expected a multiple of the 2 devices" in e for e in errs)
  assert not os.path.exists(tmp_path / "out" / "maps")  # nothing written
