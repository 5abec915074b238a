"""The binaries survive SIGKILL at any point: train, explain, evaluate, sanity
and roar, each killed at random moments (20 kills in all) and rerun with the
same flags, end with the same outputs as one uninterrupted run, and a corrupt
checkpoint or map chunk is named and never used.

The kills are subprocesses (a SIGKILL must hit a real process mid-write); the
reference run and the final run after the kills are in-process calls of the
same `run(config, workdir)` on the same config, so the comparison is between
what an interrupted and an uninterrupted run leave on disk.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import evaluate, explain, roar, sanity, train
from experiments.configs import blockmnist_standard

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARIES = {"train": train, "explain": explain, "evaluate": evaluate, "sanity": sanity,
            "roar": roar}
KILLS_PER_BINARY = 4  # 20 in all
# One small BlockMNIST pipeline: every binary does a few seconds of work.
OVERRIDES = {
    "model.width": 16, "model.depth": 1,
    "train.steps": 120, "train.batch_size": 16, "train.checkpoint_every": 10,
    "train.eval_every": 40, "train.eval_examples": 32, "train.log_every": 10,
    "train.progress_every_s": 0.0,
    "explain.methods": ("gradient", "smoothgrad", "integrated_gradients"),
    "explain.num_examples": 32, "explain.chunk_size": 8, "explain.overlays": 1,
    "evaluate.metrics": ("deletion", "insertion"),
    "sanity.num_examples": 8, "sanity.methods": ("gradient", "integrated_gradients"),
    "roar.retrain_steps": 30, "roar.fractions": (0.1, 0.5), "roar.attribution_batch": 64,
}
# What differs between two runs by design: wall-clock fields and files named by time.
VOLATILE_KEYS = {"time", "wall_time", "elapsed_s", "seconds", "rate", "eta_s", "timestamp",
                 "started", "finished", "duration_s", "steps_per_s", "examples_per_s"}
VOLATILE_DIRS = {"tensorboard", "logs"}


def _config():
  c = blockmnist_standard.get_config()
  for path, value in OVERRIDES.items():
    node = c
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _flags(workdir):
  def fmt(v):
    return "(" + ",".join(repr(e) for e in v) + ")" if isinstance(v, tuple) else str(v)
  return ["--config=experiments/configs/blockmnist_standard.py", f"--workdir={workdir}"] + [
      f"--config.{k}={fmt(v)}" for k, v in OVERRIDES.items()]


def _snapshot(workdir):
  """Every file under `workdir` that states a result, by relative path."""
  out = {}
  for root, dirs, files in os.walk(workdir):
    rel_root = os.path.relpath(root, workdir)
    top = rel_root.split(os.sep)[0]
    if top in VOLATILE_DIRS or top == "checkpoints":
      continue
    for f in files:
      if f.startswith(".") or ".tmp" in f:
        continue
      out[os.path.normpath(os.path.join(rel_root, f))] = os.path.join(root, f)
  return out


def _strip(obj):
  if isinstance(obj, dict):
    return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE_KEYS}
  if isinstance(obj, list):
    return [_strip(v) for v in obj]
  return obj


def _load(path):
  if path.endswith(".npz"):
    with np.load(path) as z:
      return {k: z[k] for k in z.files}
  if path.endswith(".npy"):
    return np.load(path)
  if path.endswith(".jsonl"):
    with open(path) as fh:
      return [_strip(json.loads(line)) for line in fh if line.strip()]
  if path.endswith(".json"):
    with open(path) as fh:
      return _strip(json.load(fh))
  with open(path, "rb") as fh:
    return fh.read()


def _assert_same(a, b, where):
  if isinstance(a, dict):
    assert isinstance(b, dict) and sorted(a) == sorted(b), f"{where}: keys differ"
    for k in a:
      _assert_same(a[k], b[k], f"{where}[{k}]")
  elif isinstance(a, list):
    assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ {len(a)} vs {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
      _assert_same(x, y, f"{where}[{i}]")
  elif isinstance(a, np.ndarray):
    np.testing.assert_array_equal(a, b, err_msg=where)
  else:
    assert a == b, f"{where}: {a!r} != {b!r}"


def _final_params(workdir):
  import orbax.checkpoint as ocp
  latest = os.path.join(workdir, "checkpoints", "latest")
  step = max(int(d) for d in os.listdir(latest) if d.isdigit())
  tree = ocp.PyTreeCheckpointer().restore(os.path.join(latest, str(step), "state"))
  import jax
  return step, [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


def _kill_at_random(binary, workdir, delay_s):
  """Starts `binary` on `workdir`, SIGKILLs it `delay_s` after it first writes
  there (before that it is only importing); returns True if it was still running."""
  before = {p: os.stat(p).st_mtime_ns for p in _all_files(workdir)}
  # Without the suite's persistent compilation cache (tests/conftest.py): the
  # kill delays are drawn against in-process durations that include compiling,
  # and a process that reads its programs from the cache would finish before
  # more of the kills, which then test nothing.
  proc = subprocess.Popen([sys.executable, "-m", f"experiments.{binary}", *_flags(workdir)],
                          cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu",
                                             JAX_COMPILATION_CACHE_DIR=""),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  t0 = time.time()
  while proc.poll() is None and time.time() - t0 < 120:
    now = {p: os.stat(p).st_mtime_ns for p in _all_files(workdir)}
    if now != before:
      break
    time.sleep(0.02)
  time.sleep(delay_s)
  alive = proc.poll() is None
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  if not alive and proc.returncode != 0:
    raise AssertionError(f"{binary} failed on its own: {proc.stderr.read().decode()[-3000:]}")
  proc.stderr.close()
  return alive


def _all_files(workdir):
  if not os.path.isdir(workdir):
    return []
  return [os.path.join(r, f) for r, _, fs in os.walk(workdir) for f in fs]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One uninterrupted run of the whole pipeline, with each binary's duration."""
  wd = str(tmp_path_factory.mktemp("uninterrupted"))
  durations = {}
  for name, mod in BINARIES.items():
    t0 = time.time()
    mod.run(_config(), wd)
    durations[name] = time.time() - t0
  return wd, durations


# Restoring the final parameters by path alone reads the sharding from the file.
@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_sigkill_at_random_points_resumes_to_the_uninterrupted_outputs(reference, tmp_path):
  ref, durations = reference
  wd = str(tmp_path / "killed")
  rng = random.Random(0)
  killed_mid_run = 0
  for name, mod in BINARIES.items():
    for _ in range(KILLS_PER_BINARY):
      # Anywhere in the work; the in-process durations are warm, a cold
      # process takes longer, so this spans from start to well past midway.
      killed_mid_run += _kill_at_random(name, wd, rng.uniform(0.0, 1.5 * durations[name]))
    mod.run(_config(), wd)  # the rerun with the same flags finishes the work
  # Kills that landed after a run finished test nothing: most must hit mid-run.
  assert killed_mid_run >= 10, f"only {killed_mid_run} of 20 kills hit a running binary"

  want, got = _snapshot(ref), _snapshot(wd)
  assert sorted(got) == sorted(want)
  differ = []
  for rel in sorted(want):
    try:
      _assert_same(_load(want[rel]), _load(got[rel]), rel)
    except AssertionError as e:
      differ.append(str(e).splitlines()[0])
  assert not differ, "outputs differ from the uninterrupted run:\n" + "\n".join(differ)
  step_a, params_a = _final_params(ref)
  step_b, params_b = _final_params(wd)
  assert step_a == step_b == OVERRIDES["train.steps"]
  for a, b in zip(params_a, params_b):
    np.testing.assert_array_equal(a, b)
