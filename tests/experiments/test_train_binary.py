"""experiments.train: logs, checkpoints, exact resume after SIGKILL, SIGTERM
saves, adversarial modes, and clear errors before any work."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import _common as C
from experiments import train
from experiments.configs import blockmnist_robust, blockmnist_standard
from saljax import logging as slog

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny(steps=20, **train_overrides):
  c = blockmnist_standard.get_config()
  c.model.width = 16
  c.model.depth = 1
  c.train.steps = steps
  c.train.batch_size = 16
  c.train.log_every = 5
  c.train.eval_every = 10
  c.train.checkpoint_every = 5
  c.train.eval_examples = 32
  c.train.progress_every_s = 0.0
  for k, v in train_overrides.items():
    c.train[k] = v
  return c


def _leaves(tree):
  return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


def test_train_writes_logs_config_and_checkpoints(tmp_path):
  out = train.run(tiny(steps=20, max_to_keep=2), str(tmp_path))
  assert out["step"] == 20 and not out["preempted"]
  assert 0.0 <= out["metrics"]["eval_accuracy"] <= 1.0
  cfg = json.load(open(tmp_path / "config.train.json"))
  assert cfg["train"]["steps"] == 20 and cfg["model"]["name"] == "mlp"
  assert not os.path.exists(tmp_path / "config.json")
  recs = slog.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in recs if "train_loss" in r] == [5, 10, 15, 20]
  assert [r["step"] for r in recs if "eval_accuracy" in r] == [10, 20]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  assert sorted(os.listdir(tmp_path / "checkpoints" / "latest")) == ["15", "20"]  # keep 2
  assert os.listdir(tmp_path / "checkpoints" / "best") == ["20"] or os.listdir(
      tmp_path / "checkpoints" / "best") == ["10"]


def test_training_learns_blockmnist(tmp_path):
  c = tiny(steps=150, eval_every=150, checkpoint_every=150, eval_examples=128)
  c.model.width = 64
  out = train.run(c, str(tmp_path))
  assert out["metrics"]["eval_accuracy"] > 0.6  # 10 classes: chance is 0.1


@pytest.mark.parametrize("mode,norm", [("fgsm", "linf"), ("pgd", "l2")])
def test_adversarial_modes_run_and_report_robust_accuracy(tmp_path, mode, norm):
  c = tiny(steps=10)
  c.train.adversarial.mode = mode
  c.train.adversarial.norm = norm
  c.train.adversarial.epsilon = 0.1 if norm == "linf" else 1.0
  c.train.adversarial.steps = 2
  out = train.run(c, str(tmp_path))
  m = out["metrics"]
  assert m["eval_robust_accuracy"] <= m["eval_accuracy"] + 1e-9


def test_robust_config_is_pgd():
  c = blockmnist_robust.get_config()
  assert c.train.adversarial.mode == "pgd" and c.train.adversarial.norm == "l2"


def _spawn(workdir, steps, every):
  cmd = [sys.executable, "-m", "experiments.train",
         "--config=experiments/configs/blockmnist_standard.py", f"--workdir={workdir}",
         "--config.model.width=16", "--config.model.depth=1", f"--config.train.steps={steps}",
         "--config.train.batch_size=16", f"--config.train.checkpoint_every={every}",
         f"--config.train.eval_every={steps}", "--config.train.eval_examples=32",
         "--config.train.log_every=5"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for_step(workdir, at_least, proc, timeout=120):
  latest = os.path.join(workdir, "checkpoints", "latest")
  t0 = time.time()
  while time.time() - t0 < timeout:
    if os.path.isdir(latest):
      steps = [int(d) for d in os.listdir(latest) if d.isdigit()]
      if steps and max(steps) >= at_least:
        return max(steps)
    if proc.poll() is not None:
      raise AssertionError(f"the run exited early: {proc.stderr.read().decode()[-2000:]}")
    time.sleep(0.005)
  raise AssertionError("no checkpoint appeared in time")


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
  steps, every = 400, 20
  killed = str(tmp_path / "killed")
  proc = _spawn(killed, steps, every)
  _wait_for_step(killed, 30, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  c = tiny(steps=steps, checkpoint_every=every, eval_every=steps)
  c.train.log_every = 5
  mgr_steps = sorted(int(d) for d in os.listdir(os.path.join(killed, "checkpoints", "latest"))
                     if d.isdigit())
  assert mgr_steps[-1] < steps, "the run finished before it was killed; the test proves nothing"
  resumed = train.run(c, killed)
  fresh = train.run(c, str(tmp_path / "fresh"))
  assert resumed["step"] == fresh["step"] == steps
  for a, b in zip(_leaves(resumed["state"]), _leaves(fresh["state"])):
    np.testing.assert_array_equal(a, b)


def test_sigterm_saves_before_exiting(tmp_path):
  wd = str(tmp_path)
  proc = _spawn(wd, 100000, 50)
  _wait_for_step(wd, 50, proc)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=60) == 0
  recs = slog.read_jsonl(os.path.join(wd, "metrics.jsonl"))
  at = [r["preempted_at"] for r in recs if "preempted_at" in r]
  assert len(at) == 1
  latest = max(int(d) for d in os.listdir(os.path.join(wd, "checkpoints", "latest")) if d.isdigit())
  assert latest == at[0]


def test_partial_checkpoint_is_never_read(tmp_path):
  c = tiny(steps=10)
  train.run(c, str(tmp_path))
  # What a kill during a write leaves: a temporary directory of a later step.
  junk = tmp_path / "checkpoints" / "latest" / "15.orbax-checkpoint-tmp-123"
  junk.mkdir()
  (junk / "garbage").write_text("half written")
  c.train.steps = 15
  out = train.run(c, str(tmp_path))  # resumes from 10, not from the torn 15
  assert out["step"] == 15
  recs = slog.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in recs if "train_loss" in r].count(15) == 1


def test_unknown_config_field():
  c = tiny()
  c.unlock()
  c.train.stepz = 3
  with pytest.raises(ValueError, match="train.stepz.*did you mean train.steps"):
    C.check_config(c)
  with pytest.raises(AttributeError, match="steps"):
    blockmnist_standard.get_config().train.stepz = 3  # locked configs refuse new fields


def test_unknown_override_on_the_command_line(tmp_path):
  r = subprocess.run(
      [sys.executable, "-m", "experiments.train", "--config=experiments/configs/blockmnist_standard.py",
       f"--workdir={tmp_path}", "--config.train.stepz=3"],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True)
  assert r.returncode != 0 and "steps" in r.stderr
  assert not os.path.exists(tmp_path / "checkpoints")


def test_unwritable_workdir(tmp_path):
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o500)
  try:
    if os.access(ro, os.W_OK):  # running as root: use a path under a file instead
      target = str(tmp_path / "file" / "sub")
      (tmp_path / "file").write_text("")
    else:
      target = str(ro / "sub")
    with pytest.raises(ValueError, match="workdir"):
      train.run(tiny(), target)
  finally:
    ro.chmod(0o700)


def test_missing_dataset(tmp_path):
  c = tiny()
  c.data.name = "cifar10"
  c.data.data_dir = str(tmp_path)
  from saljax.data.pipelines import DatasetNotFoundError
  with pytest.raises(DatasetNotFoundError, match="tfds build cifar10"):
    train.run(c, str(tmp_path / "wd"))


def test_checkpoint_from_another_model(tmp_path):
  train.run(tiny(steps=5), str(tmp_path))
  c = tiny(steps=10)
  c.model.width = 32
  with pytest.raises(ValueError, match="does not fit this model"):
    train.run(c, str(tmp_path))
  c = tiny(steps=10)
  c.model.name = "cnn"
  with pytest.raises(ValueError, match="written by model 'mlp'"):
    train.run(c, str(tmp_path))


def test_four_devices_match_one(tmp_path):
  # Data parallel training on 4 simulated CPU devices ends where the 1-device
  # run ends (up to the order of float sums).
  wd4 = str(tmp_path / "four")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  code = ("import sys, numpy as np, jax; sys.path.insert(0, %r); sys.path.insert(0, %r);"
          "import test_train_binary as T; from experiments import train;"
          "assert jax.device_count() == 4;"
          "out = train.run(T.tiny(steps=12), %r);"
          "np.savez(%r, *[np.asarray(a) for a in jax.tree_util.tree_leaves(out['state']['params'])])"
          % (REPO, os.path.dirname(os.path.abspath(__file__)), wd4, str(tmp_path / "p4.npz")))
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-3000:]
  one = train.run(tiny(steps=12), str(tmp_path / "one"))
  four = np.load(tmp_path / "p4.npz")
  leaves = _leaves(one["state"]["params"])
  assert len(leaves) == len(four.files)
  for i, a in enumerate(leaves):
    np.testing.assert_allclose(four[f"arr_{i}"], a, rtol=2e-4, atol=2e-5)
